//! An exponential moving average of the weights (Polyak averaging as in TensorFlow's
//! `ExponentialMovingAverage`, timm's `ModelEmaV2`, Ultralytics' `ModelEMA`): after every
//! optimizer step `ema ← d·ema + (1 − d)·w` for every floating-point parameter and buffer
//! (BatchNorm statistics included), with the warm-up of TensorFlow's `num_updates`:
//! `d = min(decay, (1 + n) / (10 + n))` after n updates, so short fine-tunes average over
//! a window that grows with the run instead of staying at the pretrained weights.
//!
//! Validation runs with the averaged weights (they are swapped in for the validation phase
//! and out again), and at the end of each fit the averaged weights replace the model's,
//! so the exported model and the reported metrics are the EMA's. The average is not part
//! of a resumable checkpoint: a resumed run starts it again from the resumed weights.

use super::Callback;
use crate::learner::Learner;
use tch::Tensor;

/// The EMA callback (see the module documentation).
#[derive(Debug)]
pub struct EmaCallback {
    /// The largest decay d, in (0, 1) (e.g. 0.999; timm uses 0.9998, Ultralytics 0.9999 for
    /// long runs).
    pub decay: f64,
    /// (model variable, its average), floating-point variables only.
    pairs: Vec<(Tensor, Tensor)>,
    /// Copies of the model's own weights while the averages are swapped in.
    saved: Option<Vec<Tensor>>,
    updates: u64,
}

impl EmaCallback {
    /// An EMA with maximum decay `decay`. Errors (when training starts): `decay` outside (0, 1).
    pub fn new(decay: f64) -> Self {
        EmaCallback { decay, pairs: Vec::new(), saved: None, updates: 0 }
    }

    /// The decay used for the update after `n` previous updates: `min(decay, (1+n)/(10+n))`.
    pub fn decay_at(&self, n: u64) -> f64 {
        self.decay.min((1.0 + n as f64) / (10.0 + n as f64))
    }

    /// Number of updates so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    fn swap_in(&mut self) {
        if self.saved.is_some() || self.pairs.is_empty() {
            return;
        }
        tch::no_grad(|| {
            self.saved = Some(self.pairs.iter().map(|(w, _)| w.detach().copy()).collect());
            for (w, e) in &mut self.pairs {
                w.copy_(e);
            }
        });
    }

    fn swap_out(&mut self) {
        if let Some(saved) = self.saved.take() {
            tch::no_grad(|| {
                for ((w, _), s) in self.pairs.iter_mut().zip(&saved) {
                    w.copy_(s);
                }
            });
        }
    }

    /// Leaves the averaged weights in the model for good.
    fn commit(&mut self) {
        tch::no_grad(|| {
            for (w, e) in &mut self.pairs {
                w.copy_(e);
            }
        });
        self.saved = None;
    }
}

impl Callback for EmaCallback {
    fn name(&self) -> String {
        format!("EMA(decay={})", self.decay)
    }

    /// After the other callbacks (fastai runs recorders and savers late too).
    fn order(&self) -> i32 {
        50
    }

    fn before_fit(&mut self, l: &mut Learner) -> crate::Result<()> {
        anyhow::ensure!(self.decay > 0.0 && self.decay < 1.0, "--ema {}: the decay must be in (0, 1)", self.decay);
        if self.pairs.is_empty() {
            let mut vars: Vec<(String, Tensor)> = l.model.var_store().variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            self.pairs = vars
                .into_iter()
                .filter(|(_, t)| t.is_floating_point())
                .map(|(_, t)| {
                    let e = t.detach().copy();
                    (t, e)
                })
                .collect();
        }
        Ok(())
    }

    fn after_step(&mut self, _l: &mut Learner) -> crate::Result<()> {
        let d = self.decay_at(self.updates);
        self.updates += 1;
        tch::no_grad(|| {
            for (w, e) in &mut self.pairs {
                let _ = e.lerp_(&w.detach(), 1.0 - d);
            }
        });
        Ok(())
    }

    fn before_validate(&mut self, _l: &mut Learner) -> crate::Result<()> {
        self.swap_in();
        Ok(())
    }

    fn after_validate(&mut self, _l: &mut Learner) -> crate::Result<()> {
        self.swap_out();
        Ok(())
    }

    fn after_fit(&mut self, _l: &mut Learner) -> crate::Result<()> {
        self.swap_out();
        self.commit();
        Ok(())
    }
}
