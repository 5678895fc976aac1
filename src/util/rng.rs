//! Seeded, platform-independent random numbers (ChaCha8).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The random generator used everywhere in kestrel: ChaCha8, identical streams for the
/// same seed on every platform and device (random parameters are drawn on the CPU and
/// then moved to the batch's device).
pub type Rng = ChaCha8Rng;

/// A generator seeded with `seed`.
pub fn seeded(seed: u64) -> Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// An independent stream derived from `seed` and a `stream` number (e.g. the epoch), so
/// that each epoch's shuffle is repeatable on its own.
pub fn derived(seed: u64, stream: u64) -> Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}
