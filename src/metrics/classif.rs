//! Macro-averaged F1, precision and recall over a whole epoch, as fastai's
//! `F1Score(average='macro')`, `Precision(average='macro')`, `Recall(average='macro')`
//! compute them through scikit-learn: predictions are the argmax of the logits, classes are
//! those present in the targets or predictions, and a class with no predicted (precision)
//! or no true (recall) item scores 0 (scikit-learn's `zero_division` default, which warns).

use super::Metric;
use std::collections::BTreeMap;
use tch::Tensor;

#[derive(Default)]
struct Counts {
    // class -> (true positives, predicted count, true count)
    per_class: BTreeMap<i64, (u64, u64, u64)>,
}

impl Counts {
    fn add(&mut self, pred: &Tensor, targ: &Tensor) {
        let p: Vec<i64> = Vec::try_from(pred.argmax(-1, false).reshape([-1])).unwrap_or_default();
        let t: Vec<i64> = Vec::try_from(targ.reshape([-1])).unwrap_or_default();
        for (a, b) in p.iter().zip(&t) {
            self.per_class.entry(*a).or_default().1 += 1;
            let e = self.per_class.entry(*b).or_default();
            e.2 += 1;
            if a == b { e.0 += 1; }
        }
    }
    /// (tp, predicted, true) of classes 0..=max present, flattened.
    fn sums(&self) -> Vec<f64> {
        let n = self.per_class.keys().next_back().map_or(0, |&k| k.max(-1) + 1) as usize;
        let mut v = vec![0.0; 3 * n];
        for (&k, &(tp, np, nt)) in &self.per_class {
            if k >= 0 { v[3 * k as usize..3 * k as usize + 3].copy_from_slice(&[tp as f64, np as f64, nt as f64]); }
        }
        v
    }
    fn set_sums(&mut self, s: &[f64]) -> crate::Result<()> {
        anyhow::ensure!(s.len().is_multiple_of(3), "{} class counts are not triples", s.len());
        self.per_class = s.chunks(3).enumerate().filter(|(_, c)| c[1] + c[2] > 0.0)
            .map(|(k, c)| (k as i64, (c[0].round() as u64, c[1].round() as u64, c[2].round() as u64))).collect();
        Ok(())
    }
    fn macro_avg(&self, f: impl Fn(f64, f64, f64) -> f64) -> f64 {
        if self.per_class.is_empty() { return f64::NAN; }
        let s: f64 = self.per_class.values().map(|&(tp, np, nt)| f(tp as f64, np as f64, nt as f64)).sum();
        s / self.per_class.len() as f64
    }
}

fn ratio(a: f64, b: f64) -> f64 { if b == 0.0 { 0.0 } else { a / b } }

macro_rules! macro_metric {
    ($ty:ident, $name:literal, $doc:literal, $f:expr) => {
        #[doc = $doc]
        #[derive(Default)]
        pub struct $ty { counts: Counts }
        impl $ty {
            /// A fresh metric.
            pub fn new() -> Self { Self::default() }
        }
        impl Metric for $ty {
            fn name(&self) -> String { $name.into() }
            fn reset(&mut self) { self.counts = Counts::default(); }
            fn accumulate(&mut self, pred: &Tensor, targ: &Tensor) { self.counts.add(pred, targ); }
            fn value(&self) -> f64 { self.counts.macro_avg($f) }
            fn sums(&self) -> Option<Vec<f64>> { Some(self.counts.sums()) }
            fn set_sums(&mut self, s: &[f64]) -> crate::Result<()> { self.counts.set_sums(s) }
        }
    };
}

macro_metric!(F1Score, "f1_score", "Macro F1 over the epoch (fastai `F1Score(average='macro')`), in [0, 1].",
    |tp, np, nt| ratio(2.0 * tp, np + nt));
macro_metric!(Precision, "precision_score", "Macro precision over the epoch (fastai `Precision(average='macro')`), in [0, 1].",
    |tp, np, _| ratio(tp, np));
macro_metric!(Recall, "recall_score", "Macro recall over the epoch (fastai `Recall(average='macro')`), in [0, 1].",
    |tp, _, nt| ratio(tp, nt));
