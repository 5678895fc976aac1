//! MixUp and CutMix (fastai `callback/mixup.py`: `MixHandler`, `MixUp`, `CutMix`).
//!
//! Each training batch is blended with a shuffled copy of itself, and the loss is the same
//! blend of the per-item losses against both targets (fastai's `MixHandler.lf` with
//! integer targets): `mean_i lerp(loss_i(pred, y_perm), loss_i(pred, y), λ_i)`.
//! Validation batches are left alone. The random draws come from torch's generator,
//! which the [`Learner`] seeds per batch, so a seeded run repeats.
//!
//! - MixUp (Zhang et al. 2018): λ_i ~ Beta(α, α) per item, λ_i = max(λ_i, 1 − λ_i),
//!   x = lerp(x_perm, x, λ) (fastai `MixUp(alpha=0.4)`).
//! - CutMix (Yun et al. 2019): one λ ~ Beta(α, α) per batch, a box of the shuffled batch
//!   pasted over the batch ([`rand_bbox`]), λ = 1 − box area / image area (fastai
//!   `CutMix(alpha=1.)`).

use super::Callback;
use crate::learner::{Learner, Loss};
use anyhow::{Context, ensure};
use tch::{Kind, Tensor};

/// Which mix a [`MixHandler`] does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MixKind {
    /// fastai `MixUp(alpha)`: per-item blend of whole images.
    MixUp,
    /// fastai `CutMix(alpha)`: a box of another image pasted in.
    CutMix,
}

/// The MixUp / CutMix callback (fastai `MixUp`, `CutMix`; their `MixHandler`): mixes the
/// inputs in `before_batch` and replaces the loss in `after_loss`, in training only.
/// Needs a loss that gives per-item losses ([`Loss::loss_per_item`]: cross-entropy and
/// label smoothing).
#[derive(Debug)]
pub struct MixHandler {
    /// MixUp or CutMix.
    pub kind: MixKind,
    /// α of the Beta(α, α) distribution of λ (fastai: 0.4 for MixUp, 1.0 for CutMix).
    pub alpha: f64,
    yb1: Option<Tensor>,
    lam: Option<Tensor>,
}

impl MixHandler {
    /// fastai `MixUp(alpha=0.4)` (pass 0.4 for fastai's default).
    pub fn mixup(alpha: f64) -> Self { MixHandler { kind: MixKind::MixUp, alpha, yb1: None, lam: None } }
    /// fastai `CutMix(alpha=1.)` (pass 1.0 for fastai's default).
    pub fn cutmix(alpha: f64) -> Self { MixHandler { kind: MixKind::CutMix, alpha, yb1: None, lam: None } }
}

/// `n` draws of Beta(α, α) as torch's `Beta(α, α).sample((n,))` does it (the first
/// coordinate of a Dirichlet([α, α]) draw), `f32` (n) on the CPU, from torch's generator.
pub fn sample_beta(alpha: f64, n: i64) -> Tensor {
    Tensor::full([n, 2], alpha, (Kind::Float, tch::Device::Cpu)).internal_sample_dirichlet().select(-1, 0)
}

/// fastai MixUp's inputs: `lerp(x1, x, λ)` = `x1 + λ·(x − x1)` with λ (N) broadcast over
/// the other dimensions of `x` (N, …); `x1` is the shuffled batch.
pub fn mixup_inputs(x: &Tensor, x1: &Tensor, lam: &Tensor) -> Tensor {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, x.dim().saturating_sub(1)));
    let w = lam.to_device(x.device()).to_kind(x.kind()).view(shape.as_slice());
    x1.lerp_tensor(x, &w)
}

/// fastai `MixHandler.lf` with integer targets: `mean_i lerp(l_i(pred, y1), l_i(pred, y), λ_i)`
/// where `l_i` are the per-item losses of `loss`; `lam` is (N) or a scalar tensor.
///
/// Errors: `loss` gives no per-item losses.
pub fn mix_loss(loss: &dyn Loss, pred: &Tensor, y: &Tensor, y1: &Tensor, lam: &Tensor) -> crate::Result<Tensor> {
    let l = loss.loss_per_item(pred, y).with_context(|| format!("MixUp/CutMix need per-item losses, which {} does not give", loss.name()))?;
    let l1 = loss.loss_per_item(pred, y1).expect("per-item losses given above");
    let lam = lam.to_device(l.device()).to_kind(l.kind());
    Ok(l1.lerp_tensor(&l, &lam).mean(Kind::Float))
}

/// fastai `CutMix.rand_bbox(W, H, lam)` with the box centre (`cx`, `cy`) given (fastai
/// draws them with `torch.randint(0, W)`, `torch.randint(0, H)`): side ratio
/// `sqrt(1 − λ)` computed in `f32`, sides rounded half to even (`torch.round`), the box
/// `[cx − w//2, cx + w//2) × [cy − h//2, cy + h//2)` clamped to the image.
/// Returns (x1, y1, x2, y2), pixels.
pub fn rand_bbox(w: i64, h: i64, lam: f32, cx: i64, cy: i64) -> (i64, i64, i64, i64) {
    let cut_rat = (1.0f32 - lam).sqrt();
    let cut_w = (w as f32 * cut_rat).round_ties_even() as i64;
    let cut_h = (h as f32 * cut_rat).round_ties_even() as i64;
    let x1 = (cx - cut_w.div_euclid(2)).clamp(0, w);
    let y1 = (cy - cut_h.div_euclid(2)).clamp(0, h);
    let x2 = (cx + cut_w.div_euclid(2)).clamp(0, w);
    let y2 = (cy + cut_h.div_euclid(2)).clamp(0, h);
    (x1, y1, x2, y2)
}

/// CutMix's batch: a copy of `x` (N, C, H, W) with the box (x1, y1, x2, y2) taken from `x1b`,
/// and the λ of the loss, `1 − box area / (H·W)`.
pub fn cutmix_inputs(x: &Tensor, x1b: &Tensor, bbox: (i64, i64, i64, i64)) -> (Tensor, f64) {
    let (h, w) = (x.size()[2], x.size()[3]);
    let (bx1, by1, bx2, by2) = bbox;
    let out = x.copy();
    if bx2 > bx1 && by2 > by1 {
        let mut dst = out.narrow(2, by1, by2 - by1).narrow(3, bx1, bx2 - bx1);
        dst.copy_(&x1b.narrow(2, by1, by2 - by1).narrow(3, bx1, bx2 - bx1));
    }
    (out, 1.0 - ((bx2 - bx1) * (by2 - by1)) as f64 / (w * h) as f64)
}

impl Callback for MixHandler {
    fn name(&self) -> String {
        match self.kind {
            MixKind::MixUp => format!("MixUp(alpha={})", self.alpha),
            MixKind::CutMix => format!("CutMix(alpha={})", self.alpha),
        }
    }

    fn before_fit(&mut self, l: &mut Learner) -> crate::Result<()> {
        ensure!(self.alpha > 0.0 && self.alpha.is_finite(), "{}: alpha must be a positive number", self.name());
        let probe = Tensor::zeros([1, 2], (Kind::Float, tch::Device::Cpu));
        ensure!(l.loss_func.loss_per_item(&probe, &Tensor::zeros([1], (Kind::Int64, tch::Device::Cpu))).is_some(),
                "{} needs a loss with per-item losses over class indices (cross-entropy or label smoothing), not {}",
                self.name(), l.loss_func.name());
        Ok(())
    }

    fn before_batch(&mut self, l: &mut Learner) -> crate::Result<()> {
        self.yb1 = None;
        self.lam = None;
        if !l.training {
            return Ok(());
        }
        let (x, y) = (l.xb.as_ref().context("no batch")?, l.yb.as_ref().context("no targets")?);
        let bs = y.size()[0];
        let dev = x.device();
        match self.kind {
            MixKind::MixUp => {
                let lam = sample_beta(self.alpha, bs);
                let lam = lam.maximum(&(1.0 - &lam));
                let shuffle = Tensor::randperm(bs, (Kind::Int64, tch::Device::Cpu)).to_device(dev);
                let x1 = x.index_select(0, &shuffle);
                let mixed = mixup_inputs(x, &x1, &lam);
                self.yb1 = Some(y.index_select(0, &shuffle.to_device(y.device())));
                self.lam = Some(lam);
                l.xb = Some(mixed);
            }
            MixKind::CutMix => {
                ensure!(x.dim() == 4, "CutMix needs image batches (N, C, H, W), got {:?}", x.size());
                let (h, w) = (x.size()[2], x.size()[3]);
                let lam = sample_beta(self.alpha, 1).double_value(&[0]) as f32;
                let shuffle = Tensor::randperm(bs, (Kind::Int64, tch::Device::Cpu)).to_device(dev);
                let x1 = x.index_select(0, &shuffle);
                let cx = Tensor::randint(w, [1], (Kind::Int64, tch::Device::Cpu)).int64_value(&[0]);
                let cy = Tensor::randint(h, [1], (Kind::Int64, tch::Device::Cpu)).int64_value(&[0]);
                let (mixed, lam) = cutmix_inputs(x, &x1, rand_bbox(w, h, lam, cx, cy));
                self.yb1 = Some(y.index_select(0, &shuffle.to_device(y.device())));
                self.lam = Some(Tensor::from(lam as f32));
                l.xb = Some(mixed);
            }
        }
        Ok(())
    }

    fn after_loss(&mut self, l: &mut Learner) -> crate::Result<()> {
        let (Some(y1), Some(lam)) = (self.yb1.take(), self.lam.take()) else { return Ok(()) };
        if !l.training {
            return Ok(());
        }
        let (pred, y) = (l.pred.as_ref().context("no prediction")?, l.yb.as_ref().context("no targets")?);
        let loss = mix_loss(l.loss_func.as_ref(), pred, y, &y1, &lam)?;
        l.loss = loss.double_value(&[]);
        l.loss_grad = Some(loss);
        Ok(())
    }
}
