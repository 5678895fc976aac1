//! Loss functions (fastai `losses.py`): flattened cross-entropy, label smoothing and
//! binary cross-entropy with logits, with the activation and decoding fastai pairs with each.

use tch::{Kind, Reduction, Tensor};

/// A loss as the Learner uses it: a scalar loss for a batch, plus how to turn the model's
/// raw outputs into probabilities and predictions (fastai `BaseLoss.activation`/`decodes`).
pub trait Loss: Send {
    /// Mean loss (scalar `f32` tensor) of logits `pred` (N, C) against targets `targ`.
    fn loss(&self, pred: &Tensor, targ: &Tensor) -> Tensor;
    /// Probabilities from logits (N, C).
    fn activation(&self, pred: &Tensor) -> Tensor;
    /// Predicted labels from logits: class indices (N) `i64`, or a 0/1 mask (N, C) for multi-label.
    fn decodes(&self, pred: &Tensor) -> Tensor;
    /// Short name for logs.
    fn name(&self) -> String;
    /// Per-item losses (N) `f32`, with the graph, of logits (N, C) against class indices
    /// (N) (fastai `NoneReduce`, used by MixUp and CutMix); `None` for losses without them.
    fn loss_per_item(&self, pred: &Tensor, targ: &Tensor) -> Option<Tensor> {
        let _ = (pred, targ);
        None
    }
}

/// fastai `CrossEntropyLossFlat`: `F.cross_entropy` over logits (N, C) and class indices (N) `i64`,
/// mean over the batch; activation softmax, decodes argmax.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropyLossFlat;

impl Loss for CrossEntropyLossFlat {
    fn loss(&self, pred: &Tensor, targ: &Tensor) -> Tensor {
        pred.reshape([-1, pred.size()[pred.dim() - 1]])
            .cross_entropy_loss::<Tensor>(&targ.reshape([-1]), None, Reduction::Mean, -100, 0.0)
    }
    fn activation(&self, pred: &Tensor) -> Tensor { pred.softmax(-1, Kind::Float) }
    fn decodes(&self, pred: &Tensor) -> Tensor { pred.argmax(-1, false) }
    fn name(&self) -> String { "CrossEntropyLossFlat".into() }
    fn loss_per_item(&self, pred: &Tensor, targ: &Tensor) -> Option<Tensor> {
        Some(pred.reshape([-1, pred.size()[pred.dim() - 1]])
            .cross_entropy_loss::<Tensor>(&targ.reshape([-1]), None, Reduction::None, -100, 0.0))
    }
}

/// fastai `LabelSmoothingCrossEntropyFlat(eps)` (Szegedy et al. 2016, "Rethinking the
/// Inception architecture"): `eps/C · mean_n(−Σ_c log p_nc) + (1 − eps) · NLL`, with
/// `eps` = 0.1 by default; activation softmax, decodes argmax.
#[derive(Debug, Clone, Copy)]
pub struct LabelSmoothingCrossEntropy {
    /// The weight of the uniform target (0.1 in fastai).
    pub eps: f64,
}

impl Default for LabelSmoothingCrossEntropy {
    fn default() -> Self { LabelSmoothingCrossEntropy { eps: 0.1 } }
}

impl Loss for LabelSmoothingCrossEntropy {
    fn loss(&self, pred: &Tensor, targ: &Tensor) -> Tensor {
        let c = pred.size()[pred.dim() - 1];
        let log_preds = pred.reshape([-1, c]).log_softmax(1, Kind::Float);
        let smooth = (-log_preds.sum_dim_intlist(1, false, Kind::Float)).mean(Kind::Float);
        let nll = log_preds.g_nll_loss::<Tensor>(&targ.reshape([-1]), None, Reduction::Mean, -100);
        smooth * (self.eps / c as f64) + nll * (1.0 - self.eps)
    }
    fn activation(&self, pred: &Tensor) -> Tensor { pred.softmax(-1, Kind::Float) }
    fn decodes(&self, pred: &Tensor) -> Tensor { pred.argmax(-1, false) }
    fn name(&self) -> String { format!("LabelSmoothingCrossEntropy(eps={})", self.eps) }
    fn loss_per_item(&self, pred: &Tensor, targ: &Tensor) -> Option<Tensor> {
        let c = pred.size()[pred.dim() - 1];
        let log_preds = pred.reshape([-1, c]).log_softmax(1, Kind::Float);
        let smooth = -log_preds.sum_dim_intlist(1, false, Kind::Float);
        let nll = log_preds.g_nll_loss::<Tensor>(&targ.reshape([-1]), None, Reduction::None, -100);
        Some(smooth * (self.eps / c as f64) + nll * (1.0 - self.eps))
    }
}

/// fastai `BCEWithLogitsLossFlat(thresh=0.5)` for multi-label targets: logits (N, C) and
/// 0/1 targets (N, C) (any numeric kind, converted to `f32`); activation sigmoid, decodes
/// `sigmoid > thresh`.
#[derive(Debug, Clone, Copy)]
pub struct BCEWithLogitsLossFlat {
    /// Decision threshold on the sigmoid (0.5 in fastai).
    pub thresh: f64,
}

impl Default for BCEWithLogitsLossFlat {
    fn default() -> Self { BCEWithLogitsLossFlat { thresh: 0.5 } }
}

impl Loss for BCEWithLogitsLossFlat {
    fn loss(&self, pred: &Tensor, targ: &Tensor) -> Tensor {
        pred.reshape([-1]).binary_cross_entropy_with_logits::<Tensor>(
            &targ.reshape([-1]).to_kind(Kind::Float), None, None, Reduction::Mean)
    }
    fn activation(&self, pred: &Tensor) -> Tensor { pred.sigmoid() }
    fn decodes(&self, pred: &Tensor) -> Tensor { pred.sigmoid().gt(self.thresh) }
    fn name(&self) -> String { "BCEWithLogitsLossFlat".into() }
}
