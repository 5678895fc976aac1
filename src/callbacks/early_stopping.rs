//! fastai `TrackerCallback` and `EarlyStoppingCallback`.

use super::{Callback, Cancel};
use crate::learner::Learner;

/// Tracks the best value of a monitored column (fastai `TrackerCallback`): lower is better
/// when the name contains `loss` or `error`, higher otherwise; an improvement must beat
/// the best by more than `min_delta`.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// Column of the recorder (`valid_loss`, `error_rate`, …).
    pub monitor: String,
    /// Minimum change that counts as an improvement (≥ 0).
    pub min_delta: f64,
    /// Best value so far.
    pub best: f64,
    /// Whether the last epoch improved.
    pub new_best: bool,
    lower: bool,
    idx: usize,
}

impl Tracker {
    /// Tracks `monitor` with `min_delta`.
    pub fn new(monitor: &str, min_delta: f64) -> Self {
        let lower = monitor.contains("loss") || monitor.contains("error");
        Tracker { monitor: monitor.into(), min_delta, best: f64::NAN, new_best: false, lower, idx: 0 }
    }
    /// Resets for a fit. Errors: `monitor` is not a column of `l`.
    pub fn before_fit(&mut self, l: &Learner) -> crate::Result<()> {
        let names = l.metric_names();
        self.idx = names.iter().skip(1).position(|n| *n == self.monitor).map(|i| i + 1)
            .ok_or_else(|| anyhow::anyhow!("cannot monitor '{}': the recorded columns are {:?}", self.monitor, &names[1..]))?;
        self.best = if self.lower { f64::INFINITY } else { f64::NEG_INFINITY };
        Ok(())
    }
    /// Compares the last epoch's value with the best.
    pub fn after_epoch(&mut self, l: &Learner) {
        let Some(val) = l.recorder.values.last().and_then(|r| r.get(self.idx)).copied() else { return };
        self.new_best = if self.lower { val + self.min_delta < self.best } else { val - self.min_delta > self.best };
        if self.new_best { self.best = val; }
    }
}

/// Stops training when `monitor` has not improved for `patience` epochs (fastai
/// `EarlyStoppingCallback(monitor='valid_loss', min_delta=0, patience=1)`).
///
/// With `fit_one_cycle`/`fine_tune` it logs a warning: in the middle of a one-cycle
/// schedule the learning rate is still high, so stopping early leaves a model that never
/// had the low-learning-rate final phase that gives the best weights; retrain from
/// scratch with the number of epochs where it stopped instead (fastai book, ch. 5).
#[derive(Debug, Clone)]
pub struct EarlyStoppingCallback {
    /// What is tracked.
    pub tracker: Tracker,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    wait: usize,
}

impl EarlyStoppingCallback {
    /// Stops after `patience` epochs without `monitor` improving by more than `min_delta`.
    pub fn new(monitor: &str, min_delta: f64, patience: usize) -> Self {
        EarlyStoppingCallback { tracker: Tracker::new(monitor, min_delta), patience, wait: 0 }
    }
}

impl Callback for EarlyStoppingCallback {
    fn name(&self) -> String { "EarlyStopping".into() }
    fn order(&self) -> i32 { 63 }
    fn before_fit(&mut self, l: &mut Learner) -> crate::Result<()> {
        self.wait = 0;
        if l.is_one_cycle() {
            log::warn!("EarlyStoppingCallback with fit_one_cycle/fine_tune: stopping in the middle of the cycle keeps \
                        weights trained at a high learning rate, without the final low-lr phase; prefer retraining with \
                        the number of epochs where the valid loss stopped improving");
        }
        self.tracker.before_fit(l)
    }
    fn after_epoch(&mut self, l: &mut Learner) -> crate::Result<()> {
        self.tracker.after_epoch(l);
        if self.tracker.new_best {
            self.wait = 0;
        } else {
            self.wait += 1;
            if self.wait >= self.patience {
                let msg = format!("No improvement since epoch {}: early stopping", l.epoch as isize - self.wait as isize);
                println!("{msg}");
                l.stop_reason = Some(msg);
                return Err(Cancel::Fit.into());
            }
        }
        Ok(())
    }
}
