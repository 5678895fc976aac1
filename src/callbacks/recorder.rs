//! The Recorder (fastai `Recorder`): what happened during the last fit.

use crate::learner::plot::{Series, line_plot};
use std::path::Path;

/// Per-batch training losses (smoothed), learning rates and momentums, and per-epoch
/// values of the last fit (fastai `Recorder`). The Learner fills it; it is reset at the
/// start of every fit (so after `fine_tune` it holds the unfrozen phase).
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// Smoothed training loss after each training batch (β = 0.98, debiased).
    pub losses: Vec<f64>,
    /// Learning rate of the last parameter group at each training batch.
    pub lrs: Vec<f64>,
    /// Momentum of the last parameter group at each training batch.
    pub moms: Vec<f64>,
    /// Per epoch: `[train_loss, valid_loss, metrics…]` (columns named by `metric_names`).
    pub values: Vec<Vec<f64>>,
    /// Number of training batches done at the end of each epoch.
    pub iters: Vec<usize>,
    /// Column names of `values`.
    pub metric_names: Vec<String>,
    smooth_count: i32,
    smooth_val: f32,
}

impl Recorder {
    /// Clears everything for a new fit with columns `metric_names`.
    pub fn reset(&mut self, metric_names: Vec<String>) {
        *self = Recorder { metric_names, ..Recorder::default() };
    }

    /// Records one training batch of raw loss `loss` at `lr`, `mom`; returns the new
    /// smoothed loss (fastai `AvgSmoothLoss`: `val = lerp(loss, val, 0.98)` in float32,
    /// value `val / (1 − 0.98^count)`).
    pub fn add_batch(&mut self, loss: f64, lr: f64, mom: f64) -> f64 {
        let beta = 0.98f32;
        self.smooth_count += 1;
        let l = loss as f32;
        // torch.lerp(loss, val, 0.98) for weight ≥ 0.5: end − (end − start)·(1 − weight)
        self.smooth_val -= (self.smooth_val - l) * (1.0 - beta);
        let v = self.smooth_value();
        self.losses.push(v);
        self.lrs.push(lr);
        self.moms.push(mom);
        v
    }

    /// The current smoothed training loss (NaN before the first batch).
    pub fn smooth_value(&self) -> f64 {
        if self.smooth_count == 0 { return f64::NAN; }
        (self.smooth_val / (1.0 - 0.98f64.powi(self.smooth_count)) as f32) as f64
    }

    /// The smoothing state (count, running value), for checkpoints.
    pub fn smooth_state(&self) -> (i32, f32) { (self.smooth_count, self.smooth_val) }

    /// Restores the smoothing state saved by [`Recorder::smooth_state`].
    pub fn restore_smooth(&mut self, count: i32, val: f32) {
        self.smooth_count = count;
        self.smooth_val = val;
    }

    /// fastai `plot_loss`: smoothed training loss per batch and validation loss at the end
    /// of each epoch, as a PNG at `path` (800×500).
    ///
    /// Errors: nothing recorded, or the file cannot be written.
    pub fn plot_loss(&self, path: &Path) -> crate::Result<()> {
        anyhow::ensure!(!self.losses.is_empty(), "plot_loss: nothing recorded yet (run a fit first)");
        let train: Vec<(f64, f64)> = self.losses.iter().enumerate().map(|(i, l)| (i as f64, *l)).collect();
        let valid: Vec<(f64, f64)> = self.iters.iter().zip(&self.values)
            .filter_map(|(i, v)| v.get(1).map(|l| (*i as f64, *l))).collect();
        line_plot(path, "Loss", "iteration", "loss", false,
                  &[Series { name: "train".into(), points: train }, Series { name: "valid".into(), points: valid }], &[])
    }

    /// fastai `plot_sched`: learning rate and momentum per training batch, as a PNG at
    /// `path`. Both share one axis: momentum is drawn scaled by `lr_max / mom_max`; the
    /// title gives both maxima.
    ///
    /// Errors: nothing recorded, or the file cannot be written.
    pub fn plot_sched(&self, path: &Path) -> crate::Result<()> {
        anyhow::ensure!(!self.lrs.is_empty(), "plot_sched: nothing recorded yet (run a fit first)");
        let lr_max = self.lrs.iter().cloned().fold(f64::MIN, f64::max);
        let mom_max = self.moms.iter().cloned().fold(f64::MIN, f64::max);
        let lrs: Vec<(f64, f64)> = self.lrs.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect();
        let moms: Vec<(f64, f64)> = self.moms.iter().enumerate().map(|(i, v)| (i as f64, v / mom_max * lr_max)).collect();
        let title = format!("lr (max {lr_max:.3e}) and mom (max {mom_max:.3}, scaled)");
        line_plot(path, &title, "iteration", "lr", false,
                  &[Series { name: "lr".into(), points: lrs }, Series { name: "mom (scaled)".into(), points: moms }], &[])
    }
}
