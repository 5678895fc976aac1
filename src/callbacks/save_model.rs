//! fastai `SaveModelCallback`, and periodic checkpoints for `--resume`.

use super::Callback;
use super::early_stopping::Tracker;
use crate::learner::Learner;

/// Saves the model whenever `monitor` improves, and loads the best one at the end of the
/// fit (fastai `SaveModelCallback(monitor='valid_loss', fname='model')`). Files go to
/// `model_dir/<fname>.pth` (model + optimizer).
#[derive(Debug, Clone)]
pub struct SaveModelCallback {
    /// What is tracked.
    pub tracker: Tracker,
    /// File name without extension.
    pub fname: String,
    /// Save every epoch as `<fname>_<epoch>` instead of only improvements (and load nothing at the end).
    pub every_epoch: bool,
}

impl SaveModelCallback {
    /// Saves the best model by `monitor` under `fname`.
    pub fn new(monitor: &str, fname: &str) -> Self {
        SaveModelCallback { tracker: Tracker::new(monitor, 0.0), fname: fname.into(), every_epoch: false }
    }
}

impl Callback for SaveModelCallback {
    fn name(&self) -> String { "SaveModel".into() }
    fn order(&self) -> i32 { 61 }
    fn before_fit(&mut self, l: &mut Learner) -> crate::Result<()> { self.tracker.before_fit(l) }
    fn after_epoch(&mut self, l: &mut Learner) -> crate::Result<()> {
        if self.every_epoch {
            l.save(&format!("{}_{}", self.fname, l.epoch), None)?;
            return Ok(());
        }
        self.tracker.after_epoch(l);
        if self.tracker.new_best {
            println!("Better model found at epoch {} with {} value: {}.", l.epoch, self.tracker.monitor, self.tracker.best);
            l.save(&self.fname, None)?;
        }
        Ok(())
    }
    fn after_fit(&mut self, l: &mut Learner) -> crate::Result<()> {
        if !self.every_epoch && l.checkpoint_path(&self.fname).is_file() { l.load(&self.fname)?; }
        Ok(())
    }
}

/// Writes a resumable checkpoint `model_dir/<name>.pth` every `every_n_batches` training
/// batches (if set) and at the end of every `every_n_epochs`-th epoch of each phase, with
/// the position in the schedule; [`Learner::load_checkpoint`] then continues the
/// interrupted fit at that batch. Each write is atomic, so a `kill -9` (or a full disk)
/// during a write leaves the previous checkpoint whole: at most the work since it is lost.
#[derive(Debug, Clone)]
pub struct SaveCheckpoint {
    /// File name without extension.
    pub name: String,
    /// Also save after every this many training batches (counted within a phase).
    pub every_n_batches: Option<usize>,
    /// Save after every this many epochs (1: every epoch; `usize::MAX`: only with
    /// `every_n_batches`).
    pub every_n_epochs: usize,
}

impl SaveCheckpoint {
    /// Checkpoints to `name`, at epoch ends and every `every_n_batches` batches.
    pub fn new(name: &str, every_n_batches: Option<usize>) -> Self {
        SaveCheckpoint { name: name.into(), every_n_batches, every_n_epochs: 1 }
    }

    /// Checkpoints to `name` after every `n` epochs only (`--checkpoint-every Ne`).
    pub fn every_epochs(name: &str, n: usize) -> Self {
        SaveCheckpoint { name: name.into(), every_n_batches: None, every_n_epochs: n.max(1) }
    }
}

impl Callback for SaveCheckpoint {
    fn name(&self) -> String { "SaveCheckpoint".into() }
    fn order(&self) -> i32 { 70 }
    fn after_batch(&mut self, l: &mut Learner) -> crate::Result<()> {
        if let Some(n) = self.every_n_batches && l.training && n > 0 && l.train_iter.is_multiple_of(n) {
            let _guard = super::SavingGuard::new();
            l.save(&self.name, Some(l.position_after_batch()))?;
        }
        Ok(())
    }
    fn after_epoch(&mut self, l: &mut Learner) -> crate::Result<()> {
        if (l.epoch + 1).is_multiple_of(self.every_n_epochs) {
            let _guard = super::SavingGuard::new();
            l.save(&self.name, Some(l.position_after_epoch()))?;
        }
        Ok(())
    }
}
