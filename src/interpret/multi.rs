//! Multi-label interpretation (fastai book chapter 6): predictions with the sigmoid,
//! per-label precision / recall / support, F1 (samples), `accuracy_multi`, and the
//! threshold chosen on the validation set (`--thresh auto`).

use crate::data::BatchSource;
use crate::metrics::f1_per_sample;
use crate::models::Model;
use anyhow::{Context, bail};
use std::fmt;
use tch::{Device, Kind, Tensor};

/// Sigmoid probabilities and one-hot targets of a multi-label loader, on the CPU.
#[derive(Debug)]
pub struct MultiPreds {
    /// `sigmoid(logits)`, `f32` (N, C), in [0, 1].
    pub probs: Tensor,
    /// One-hot targets, `f32` (N, C).
    pub targets: Tensor,
}

/// fastai `get_preds` with `BCEWithLogitsLossFlat`'s activation: one pass of `dl` (a
/// validation loader with one-hot targets) through `model` in evaluation mode.
///
/// Errors: a loader error, a `u8` batch, targets that are not (N, C), an empty loader.
pub fn get_multi_preds(model: &dyn Model, dl: &dyn BatchSource) -> crate::Result<MultiPreds> {
    let device = model.var_store().device();
    let (mut probs, mut targets) = (Vec::new(), Vec::new());
    tch::no_grad(|| -> crate::Result<()> {
        for (i, batch) in dl.batches(0).enumerate() {
            let batch = batch.with_context(|| format!("batch {i} of the loader"))?;
            if batch.x.kind() == Kind::Uint8 {
                bail!("batch {i} is u8 images: the loader has no batch transforms (normalisation) to make model inputs");
            }
            if batch.y.dim() != 2 {
                bail!("batch {i} has single-label targets {:?}: a multi-label loader gives one-hot (N, C)", batch.y.size());
            }
            let logits = model.forward_t(&batch.x.to_device(device), false).to_kind(Kind::Float);
            probs.push(logits.sigmoid().to_device(Device::Cpu));
            targets.push(batch.y.to_kind(Kind::Float).to_device(Device::Cpu));
        }
        Ok(())
    })?;
    if probs.is_empty() {
        bail!("the loader yielded no batches");
    }
    Ok(MultiPreds { probs: Tensor::cat(&probs, 0), targets: Tensor::cat(&targets, 0) })
}

/// Mean per-sample F1 of `probs > thresh` against `targets` (fastai `F1ScoreMulti(average=
/// 'samples')` on probabilities), in [0, 1].
pub fn f1_samples(probs: &Tensor, targets: &Tensor, thresh: f64) -> f64 {
    let f = f1_per_sample(&probs.gt(thresh), targets);
    if f.is_empty() { f64::NAN } else { f.iter().sum::<f64>() / f.len() as f64 }
}

/// Fraction of (item, label) cells where `probs > thresh` agrees with the target (fastai
/// `accuracy_multi(sigmoid=False)`), in [0, 1].
pub fn accuracy_multi_probs(probs: &Tensor, targets: &Tensor, thresh: f64) -> f64 {
    probs.gt(thresh).eq_tensor(&targets.gt(0.5)).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
}

/// The thresholds tried by [`best_threshold`]: 0.05, 0.06, …, 0.95.
pub fn threshold_grid() -> Vec<f64> {
    (5..=95).map(|i| i as f64 / 100.0).collect()
}

/// The decision threshold that maximises F1 (samples) of `probs` against `targets` over
/// [`threshold_grid`] (the book's chapter 6 picks it by plotting the metric against the
/// threshold on the validation set); the lowest of equal scores. Returns (thresh, F1).
/// The score is optimistic for the set it was chosen on: reports say so.
pub fn best_threshold(probs: &Tensor, targets: &Tensor) -> (f64, f64) {
    let mut best = (0.5, f64::NEG_INFINITY);
    for t in threshold_grid() {
        let f = f1_samples(probs, targets, t);
        if f > best.1 {
            best = (t, f);
        }
    }
    best
}

/// Precision, recall and support of one label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelStats {
    /// The label.
    pub label: String,
    /// Of the items predicted with the label, the fraction that have it (0 when none is predicted).
    pub precision: f64,
    /// Of the items that have the label, the fraction predicted with it (0 when none has it).
    pub recall: f64,
    /// Items that have the label.
    pub support: usize,
    /// Items predicted with the label.
    pub predicted: usize,
}

/// The multi-label counterpart of the classification report: per-label precision and
/// recall (scikit-learn `precision_score`/`recall_score(average=None, zero_division=0)`),
/// F1 (samples) and `accuracy_multi` at one threshold.
#[derive(Debug, Clone)]
pub struct MultiLabelReport {
    /// The decision threshold on the sigmoid.
    pub thresh: f64,
    /// One row per label, vocabulary order.
    pub labels: Vec<LabelStats>,
    /// Mean per-item F1, in [0, 1].
    pub f1_samples: f64,
    /// Fraction of agreeing (item, label) cells, in [0, 1].
    pub accuracy_multi: f64,
    /// Items with no label above the threshold (predicted as none).
    pub n_none: usize,
    /// Number of items.
    pub n: usize,
}

impl MultiLabelReport {
    /// The report of probabilities `probs` (N, C) against one-hot `targets` (N, C) with
    /// label names `vocab` (C) at `thresh`.
    ///
    /// Errors: shapes that disagree with each other or with `vocab`.
    pub fn new(probs: &Tensor, targets: &Tensor, vocab: &[String], thresh: f64) -> crate::Result<Self> {
        let (ps, ts) = (probs.size(), targets.size());
        if ps.len() != 2 || ps != ts || ps[1] as usize != vocab.len() {
            bail!("multi-label report: probabilities {ps:?}, targets {ts:?} and {} labels disagree", vocab.len());
        }
        let pred = probs.gt(thresh);
        let targ = targets.gt(0.5);
        let count = |t: &Tensor| Vec::<i64>::try_from(t.sum_dim_intlist(0, false, Kind::Int64)).unwrap_or_default();
        let tp = count(&pred.logical_and(&targ));
        let np = count(&pred);
        let nt = count(&targ);
        let ratio = |a: i64, b: i64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let labels = vocab.iter().enumerate().map(|(c, l)| LabelStats {
            label: l.clone(),
            precision: ratio(tp[c], np[c]),
            recall: ratio(tp[c], nt[c]),
            support: nt[c] as usize,
            predicted: np[c] as usize,
        }).collect();
        let per_item = Vec::<i64>::try_from(pred.sum_dim_intlist(1, false, Kind::Int64)).unwrap_or_default();
        Ok(Self {
            thresh,
            labels,
            f1_samples: f1_samples(probs, targets, thresh),
            accuracy_multi: accuracy_multi_probs(probs, targets, thresh),
            n_none: per_item.iter().filter(|&&k| k == 0).count(),
            n: ps[0] as usize,
        })
    }

    /// The per-label rows as table cells: label, precision, recall, support, predicted.
    pub fn rows(&self) -> Vec<Vec<String>> {
        self.labels.iter().map(|s| vec![s.label.clone(), format!("{:.4}", s.precision), format!("{:.4}", s.recall),
                                          s.support.to_string(), s.predicted.to_string()]).collect()
    }

    /// The column names of [`Self::rows`].
    pub fn header() -> Vec<String> {
        ["label", "precision", "recall", "support", "predicted"].map(String::from).to_vec()
    }

    /// The report as a Markdown table with the summary line above it.
    pub fn to_markdown(&self) -> String {
        let mut s = format!("{}\n\n| {} |\n|---|---:|---:|---:|---:|\n", self.summary(), Self::header().join(" | "));
        for r in self.rows() {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }

    /// One line: F1 (samples), accuracy_multi, the threshold and the items predicted as none.
    pub fn summary(&self) -> String {
        format!(
            "{} items at threshold {}: f1_score (samples) {:.4}, accuracy_multi {:.4}; {} predicted as none",
            self.n, self.thresh, self.f1_samples, self.accuracy_multi, self.n_none
        )
    }
}

impl fmt::Display for MultiLabelReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.labels.iter().map(|s| s.label.chars().count()).max().unwrap_or(5).max(5);
        writeln!(f, "{:>w$} {:>10} {:>10} {:>8} {:>10}", "label", "precision", "recall", "support", "predicted")?;
        for s in &self.labels {
            writeln!(f, "{:>w$} {:>10.4} {:>10.4} {:>8} {:>10}", s.label, s.precision, s.recall, s.support, s.predicted)?;
        }
        writeln!(f, "\n{}", self.summary())
    }
}
