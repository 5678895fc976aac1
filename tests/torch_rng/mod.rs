//! torch's random generator is one per process, and `cargo test` runs a binary's tests on
//! parallel threads. A test that seeds it (`tch::manual_seed`) and then draws — a model's
//! initial weights, random data, or the Learner's per-batch seeding during a fit — gets
//! other tests' draws interleaved with its own unless it holds this lock for its whole run.
//! Without it, `fine_tune_learns_synthetic_shapes` started from another test's weights on
//! a busy CI machine and ended at accuracy 0.75 instead of its seeded 0.99.

use std::sync::{Mutex, MutexGuard};

static TORCH_RNG: Mutex<()> = Mutex::new(());

/// Holds torch's generator for the calling test until the guard is dropped. A test that
/// panicked while holding it does not fail the others (the poison is ignored: the lock
/// guards no data).
pub fn torch_rng() -> MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
