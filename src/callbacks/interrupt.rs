//! Stopping a fit cleanly on Ctrl-C: finish the current batch, write a resumable
//! checkpoint, stop.

use super::{Callback, Cancel};
use crate::learner::Learner;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable for tests: `KESTREL_INTERRUPT_AFTER=N` makes the CLI's
/// [`InterruptCallback`] behave as if Ctrl-C was pressed during training batch N (counted
/// over the whole run, 1-based).
pub const INTERRUPT_AFTER_ENV: &str = "KESTREL_INTERRUPT_AFTER";

/// When `flag` is set (by a Ctrl-C handler, see [`InterruptCallback::on_ctrl_c`]) — or
/// after `after_batches` training batches — the current batch finishes, a checkpoint
/// `model_dir/<name>.pth` with the position after that batch is written
/// ([`Learner::save`]), [`Learner::stop_reason`] is set to `"interrupted"` and the fit is
/// cancelled ([`Cancel::Fit`]; `fine_tune` then skips its remaining phase).
/// [`Learner::load_checkpoint`] resumes at the next batch.
pub struct InterruptCallback {
    /// Set when the user asked to stop.
    pub flag: Arc<AtomicBool>,
    /// Checkpoint name (file `model_dir/<name>.pth`).
    pub name: String,
    /// Simulated interrupt after this many training batches (tests).
    pub after_batches: Option<usize>,
    seen: usize,
}

impl InterruptCallback {
    /// A callback watching `flag`, checkpointing to `name`.
    pub fn new(flag: Arc<AtomicBool>, name: &str, after_batches: Option<usize>) -> Self {
        InterruptCallback { flag, name: name.into(), after_batches, seen: 0 }
    }

    /// A callback whose flag is set by Ctrl-C (SIGINT) and, for tests, by
    /// [`INTERRUPT_AFTER_ENV`]. Only one handler per process can be installed: a second
    /// call reuses the flag of the first.
    ///
    /// Errors: the handler cannot be installed, or the environment variable is not a number.
    pub fn on_ctrl_c(name: &str) -> crate::Result<Self> {
        static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
        let flag = match FLAG.get() {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(AtomicBool::new(false));
                let g = f.clone();
                ctrlc::set_handler(move || {
                    if g.swap(true, Ordering::SeqCst) {
                        std::process::exit(130); // second Ctrl-C: stop now
                    }
                    eprintln!("\ninterrupted: finishing this batch and writing a checkpoint (Ctrl-C again to quit at once)");
                })?;
                FLAG.get_or_init(|| f).clone()
            }
        };
        let after = match std::env::var(INTERRUPT_AFTER_ENV) {
            Ok(v) => Some(v.parse().map_err(|_| anyhow::anyhow!("{INTERRUPT_AFTER_ENV}={v} is not a number of batches"))?),
            Err(_) => None,
        };
        Ok(Self::new(flag, name, after))
    }

    /// True once the user asked to stop.
    pub fn interrupted(&self) -> bool { self.flag.load(Ordering::SeqCst) }
}

impl Callback for InterruptCallback {
    fn name(&self) -> String { "InterruptCallback".into() }
    fn order(&self) -> i32 { 80 }
    fn after_batch(&mut self, l: &mut Learner) -> crate::Result<()> {
        if !l.training { return Ok(()); }
        self.seen += 1;
        if self.after_batches == Some(self.seen) { self.flag.store(true, Ordering::SeqCst); }
        if self.flag.load(Ordering::SeqCst) {
            l.save(&self.name, Some(l.position_after_batch()))?;
            l.stop_reason = Some("interrupted".into());
            return Err(Cancel::Fit.into());
        }
        Ok(())
    }
}
