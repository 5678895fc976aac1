//! Stopping a fit cleanly on Ctrl-C (SIGINT) or SIGTERM (what schedulers, Kubernetes and
//! spot-instance preemption send): finish the current batch, write a resumable
//! checkpoint, stop — and, whatever the program is doing, exit within [`GRACE`].

use super::{Callback, Cancel};
use crate::learner::Learner;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Environment variable for tests: `KESTREL_INTERRUPT_AFTER=N` makes the CLI's
/// [`InterruptCallback`] behave as if Ctrl-C was pressed during training batch N (counted
/// over the whole run, 1-based).
pub const INTERRUPT_AFTER_ENV: &str = "KESTREL_INTERRUPT_AFTER";

/// The exit status of a command stopped by Ctrl-C, SIGTERM or SIGHUP: 130 (128 + SIGINT,
/// the shell's convention), whether it stopped at a safe point with a checkpoint, was ended
/// by the watchdog, or by a second Ctrl-C.
pub const INTERRUPTED_STATUS: i32 = 130;

/// The error of a command that stopped because it was asked to (Ctrl-C, SIGTERM, SIGHUP).
/// Its message says what was saved and the command that goes on; the `kestrel` binary
/// prints it and exits with [`INTERRUPTED_STATUS`] instead of 1.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.0) }
}

impl std::error::Error for Interrupted {}

/// The exit status for `e`: [`INTERRUPTED_STATUS`] when it (or an error it wraps) is
/// [`Interrupted`], else 1.
pub fn exit_status(e: &anyhow::Error) -> i32 {
    if e.chain().any(|c| c.is::<Interrupted>()) { INTERRUPTED_STATUS } else { 1 }
}

/// How long after the signal the process may run before the watchdog ends it (8 s:
/// Kubernetes sends SIGKILL 30 s after SIGTERM, and kestrel answers within 10 s). A
/// checkpoint being written then is finished first (up to [`SAVE_GRACE`] in all).
pub const GRACE: Duration = Duration::from_secs(8);
/// The longest the watchdog waits for a checkpoint write in progress.
pub const SAVE_GRACE: Duration = Duration::from_secs(25);

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static SAVING: AtomicUsize = AtomicUsize::new(0);
static RESUME_HINT: Mutex<Option<(PathBuf, String)>> = Mutex::new(None);

/// Installs the handler of SIGINT, SIGTERM and SIGHUP once per process (the `ctrlc` crate
/// with its `termination` feature) and returns the flag it sets. The first signal sets the
/// flag, prints what happens next and starts a watchdog that exits the process (status
/// 130) [`GRACE`] later if it is still running, printing the resume command of the last
/// complete checkpoint (see [`set_resume_hint`]); a second signal exits at once, printing
/// the same.
///
/// Errors: the handler cannot be installed.
pub fn install_handler() -> crate::Result<Arc<AtomicBool>> {
    if let Some(f) = FLAG.get() {
        return Ok(f.clone());
    }
    let f = Arc::new(AtomicBool::new(false));
    let g = f.clone();
    ctrlc::set_handler(move || {
        if g.swap(true, Ordering::SeqCst) {
            stop_now("stopping at once (a second signal)");
        }
        eprintln!("\ninterrupted (Ctrl-C or SIGTERM): finishing this batch and writing a checkpoint (Ctrl-C again to quit at once)");
        std::thread::spawn(watchdog);
    })?;
    Ok(FLAG.get_or_init(|| f).clone())
}

/// True once SIGINT/SIGTERM arrived (always false when [`install_handler`] was not called).
pub fn interrupt_requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

/// Tells the watchdog which checkpoint file a resume reads and the command that resumes
/// from it; printed when the watchdog has to end the process and the file exists.
pub fn set_resume_hint(checkpoint: PathBuf, command: String) {
    *RESUME_HINT.lock().unwrap_or_else(|e| e.into_inner()) = Some((checkpoint, command));
}

/// Marks a checkpoint write in progress: the watchdog waits for it (up to [`SAVE_GRACE`]).
pub struct SavingGuard(());

impl SavingGuard {
    /// Starts a guarded write.
    pub fn new() -> Self {
        SAVING.fetch_add(1, Ordering::SeqCst);
        SavingGuard(())
    }
}

impl Default for SavingGuard {
    fn default() -> Self { Self::new() }
}

impl Drop for SavingGuard {
    fn drop(&mut self) { SAVING.fetch_sub(1, Ordering::SeqCst); }
}

fn watchdog() {
    let t0 = Instant::now();
    std::thread::sleep(GRACE);
    while SAVING.load(Ordering::SeqCst) > 0 && t0.elapsed() < SAVE_GRACE {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop_now(&format!("and no safe point was reached within {} s; stopping now", GRACE.as_secs()));
}

/// Prints why the process stops before a safe point and what can be resumed (the last
/// complete checkpoint and its command, from [`set_resume_hint`]), then exits with 130.
/// Checkpoints are written atomically, so the one named is whole even when a write was in
/// progress.
fn stop_now(why: &str) -> ! {
    let hint = RESUME_HINT.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match hint {
        Some((ckpt, cmd)) if ckpt.is_file() => {
            eprintln!("\nerror: interrupted, {why}.\nThe last complete checkpoint is {}\nresume with:\n  {cmd}", ckpt.display())
        }
        _ => eprintln!("\nerror: interrupted, {why} (no checkpoint to resume from: run the command again)"),
    }
    exit_now();
}

/// Ends the process at once with status [`INTERRUPTED_STATUS`], without running exit handlers: libtorch's
/// static destructors would otherwise run while the main thread is still computing.
fn exit_now() -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: _exit is async-signal-safe and only ends the process.
    unsafe { libc::_exit(INTERRUPTED_STATUS) }
}

/// When `flag` is set (by the signal handler, see [`InterruptCallback::on_ctrl_c`]) — or
/// after `after_batches` training batches — the current batch finishes, a checkpoint
/// `model_dir/<name>.pth` is written ([`Learner::save`]), [`Learner::stop_reason`] is set
/// to `"interrupted"` and the fit is cancelled ([`Cancel::Fit`]; `fine_tune` then skips its
/// remaining phase). In training the checkpoint holds the position after that batch; in
/// validation, the end of the epoch's training (the resumed run redoes the validation).
/// [`Learner::load_checkpoint`] resumes there.
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

    /// A callback whose flag is set by Ctrl-C, SIGTERM or SIGHUP ([`install_handler`])
    /// and, for tests, by [`INTERRUPT_AFTER_ENV`].
    ///
    /// Errors: the handler cannot be installed, or the environment variable is not a number.
    pub fn on_ctrl_c(name: &str) -> crate::Result<Self> {
        let flag = install_handler()?;
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
        if l.training {
            self.seen += 1;
            if self.after_batches == Some(self.seen) { self.flag.store(true, Ordering::SeqCst); }
        }
        if self.flag.load(Ordering::SeqCst) {
            let pos = if l.training { l.position_after_batch() } else { l.position_before_validation() };
            let _guard = SavingGuard::new();
            l.save(&self.name, Some(pos))?;
            l.stop_reason = Some("interrupted".into());
            return Err(Cancel::Fit.into());
        }
        Ok(())
    }
}
