//! Multi-label metrics over a whole epoch (fastai `F1ScoreMulti(average='samples')`,
//! scikit-learn's `f1_score(average='samples')` on `sigmoid(pred) > thresh`).

use super::Metric;
use tch::{Kind, Tensor};

/// Per-sample F1 of 0/1 predictions against 0/1 targets, both (N, C): `2·|P∩T| / (|P| + |T|)`
/// for each row, 0 where a row has neither a predicted nor a true label (scikit-learn's
/// `zero_division` default, which warns). Returns the N values.
pub fn f1_per_sample(pred: &Tensor, targ: &Tensor) -> Vec<f64> {
    let p = pred.to_kind(Kind::Float);
    let t = targ.to_kind(Kind::Float);
    let inter = (&p * &t).sum_dim_intlist(1, false, Kind::Double);
    let denom = p.sum_dim_intlist(1, false, Kind::Double) + t.sum_dim_intlist(1, false, Kind::Double);
    let inter = Vec::<f64>::try_from(inter.to_device(tch::Device::Cpu)).unwrap_or_default();
    let denom = Vec::<f64>::try_from(denom.to_device(tch::Device::Cpu)).unwrap_or_default();
    inter.iter().zip(&denom).map(|(i, d)| if *d == 0.0 { 0.0 } else { 2.0 * i / d }).collect()
}

/// fastai `F1ScoreMulti(thresh, sigmoid=True, average='samples')`: the mean over the
/// epoch's items of each item's F1 between the labels with `sigmoid(logit) > thresh` and
/// its true labels ([`f1_per_sample`]), in [0, 1]. Logits (N, C), 0/1 targets (N, C).
pub struct F1ScoreMulti {
    thresh: f64,
    sum: f64,
    n: usize,
}

impl F1ScoreMulti {
    /// The metric at decision threshold `thresh` on the sigmoid (fastai default 0.5; the
    /// book uses 0.2 for PASCAL).
    pub fn new(thresh: f64) -> Self {
        Self { thresh, sum: 0.0, n: 0 }
    }
}

impl Metric for F1ScoreMulti {
    fn name(&self) -> String { "f1_score".into() }
    fn reset(&mut self) { self.sum = 0.0; self.n = 0; }
    fn accumulate(&mut self, pred: &Tensor, targ: &Tensor) {
        let f = f1_per_sample(&pred.sigmoid().gt(self.thresh), targ);
        self.sum += f.iter().sum::<f64>();
        self.n += f.len();
    }
    fn value(&self) -> f64 { if self.n == 0 { f64::NAN } else { self.sum / self.n as f64 } }
}
