//! Metrics (fastai `metrics.py`). Two kinds, as in fastai:
//! - per-batch functions averaged over the epoch weighted by batch size (fastai `AvgMetric`):
//!   [`error_rate`], [`accuracy`], [`top_k_accuracy`], [`accuracy_multi`];
//! - whole-epoch metrics computed once from all predictions (fastai `AccumMetric` wrapping
//!   scikit-learn): [`F1Score`], [`Precision`], [`Recall`] with macro averaging, and
//!   [`F1ScoreMulti`] (multi-label, averaged over samples).

mod classif;
mod multi;

pub use classif::{F1Score, Precision, Recall};
pub use multi::{F1ScoreMulti, f1_per_sample};

use tch::{Kind, Tensor};

/// An epoch metric: reset at the start of validation, fed every batch, read at the end
/// (fastai `Metric`).
pub trait Metric: Send {
    /// Column name in the results table (e.g. `error_rate`).
    fn name(&self) -> String;
    /// Forgets the previous epoch.
    fn reset(&mut self);
    /// Adds one batch: logits `pred` (N, C) and targets `targ` (N) `i64` or (N, C) 0/1.
    fn accumulate(&mut self, pred: &Tensor, targ: &Tensor);
    /// The epoch's value (NaN when nothing was accumulated).
    fn value(&self) -> f64;
    /// The accumulated state as numbers that add up over data-parallel ranks (sums and
    /// counts, possibly of different lengths per rank: the shorter are padded with zeros),
    /// or `None` when the metric cannot be reduced that way.
    fn sums(&self) -> Option<Vec<f64>> { None }
    /// Replaces the state by `sums`, [`Metric::sums`] added over the ranks.
    /// Errors: the metric has no summable state, or `sums` does not fit it.
    fn set_sums(&mut self, sums: &[f64]) -> crate::Result<()> {
        anyhow::bail!("metric {} cannot be reduced across ranks ({} sums given)", self.name(), sums.len())
    }
}

/// A per-batch metric function averaged over an epoch, weighted by batch size (fastai `AvgMetric`).
pub struct AvgMetric {
    name: String,
    func: Box<dyn Fn(&Tensor, &Tensor) -> f64 + Send>,
    total: f64,
    count: i64,
}

impl AvgMetric {
    /// Wraps `func(pred, targ) -> value of the batch` under `name`.
    pub fn new(name: &str, func: impl Fn(&Tensor, &Tensor) -> f64 + Send + 'static) -> Self {
        AvgMetric { name: name.into(), func: Box::new(func), total: 0.0, count: 0 }
    }
}

impl Metric for AvgMetric {
    fn name(&self) -> String { self.name.clone() }
    fn reset(&mut self) { self.total = 0.0; self.count = 0; }
    fn accumulate(&mut self, pred: &Tensor, targ: &Tensor) {
        let bs = targ.size().first().copied().unwrap_or(0);
        self.total += (self.func)(pred, targ) * bs as f64;
        self.count += bs;
    }
    fn value(&self) -> f64 { if self.count == 0 { f64::NAN } else { self.total / self.count as f64 } }
    fn sums(&self) -> Option<Vec<f64>> { Some(vec![self.total, self.count as f64]) }
    fn set_sums(&mut self, sums: &[f64]) -> crate::Result<()> {
        anyhow::ensure!(sums.len() == 2, "metric {}: 2 sums expected, {} given", self.name, sums.len());
        self.total = sums[0];
        self.count = sums[1].round() as i64;
        Ok(())
    }
}

/// fastai `accuracy`: fraction of rows whose argmax over logits (N, C) equals the target (N).
pub fn accuracy_fn(pred: &Tensor, targ: &Tensor) -> f64 {
    pred.argmax(-1, false).eq_tensor(&targ.reshape([-1])).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
}

/// fastai `top_k_accuracy(k)`: fraction of rows whose target is among the `k` largest logits.
pub fn top_k_accuracy_fn(pred: &Tensor, targ: &Tensor, k: i64) -> f64 {
    let k = k.min(pred.size()[pred.dim() - 1]);
    let (_, idx) = pred.topk(k, -1, true, true);
    idx.eq_tensor(&targ.reshape([-1, 1]).expand_as(&idx)).sum_dim_intlist(-1, false, Kind::Float)
        .mean(Kind::Float).double_value(&[])
}

/// fastai `accuracy_multi(thresh, sigmoid=True)`: fraction of (row, label) cells where
/// `sigmoid(pred) > thresh` agrees with the 0/1 target (N, C).
pub fn accuracy_multi_fn(pred: &Tensor, targ: &Tensor, thresh: f64) -> f64 {
    pred.sigmoid().gt(thresh).eq_tensor(&targ.to_kind(Kind::Bool)).to_kind(Kind::Float)
        .mean(Kind::Float).double_value(&[])
}

/// fastai `accuracy` as an epoch metric (batch-size-weighted mean over batches), in [0, 1].
pub fn accuracy() -> Box<dyn Metric> { Box::new(AvgMetric::new("accuracy", accuracy_fn)) }

/// fastai `error_rate` = 1 − accuracy, in [0, 1].
pub fn error_rate() -> Box<dyn Metric> { Box::new(AvgMetric::new("error_rate", |p, t| 1.0 - accuracy_fn(p, t))) }

/// fastai `top_k_accuracy(k=5)`, named `top_k_accuracy`.
pub fn top_k_accuracy(k: i64) -> Box<dyn Metric> {
    Box::new(AvgMetric::new("top_k_accuracy", move |p, t| top_k_accuracy_fn(p, t, k)))
}

/// fastai `accuracy_multi(thresh=0.5)` for multi-label targets.
pub fn accuracy_multi(thresh: f64) -> Box<dyn Metric> {
    Box::new(AvgMetric::new("accuracy_multi", move |p, t| accuracy_multi_fn(p, t, thresh)))
}
