//! Predictions over a whole loader (fastai `Learner.get_preds` and `Learner.tta`).

use crate::data::BatchSource;
use crate::export::{TtaOptions, tta_combine};
use crate::models::Model;
use anyhow::{Context, bail};
use tch::{Device, Kind, Tensor};

/// What [`get_preds`] returns, on the CPU, in the loader's item order.
#[derive(Debug)]
pub struct Preds {
    /// Softmax probabilities, `f32` (N, C).
    pub probs: Tensor,
    /// Target class indices, `i64` (N).
    pub targets: Tensor,
    /// Per-item cross-entropy losses (reduction none, natural log), `f32` (N).
    pub losses: Tensor,
}

/// Runs `model` in evaluation mode over one pass of `dl` (fastai `get_preds(dl,
/// with_loss=True)` with `CrossEntropyLossFlat`): probabilities, targets and per-item
/// losses. `dl` must yield model-ready batches (`f32`, batch transforms applied) — use an
/// unshuffled loader without `drop_last` (a validation loader) to cover every item once.
///
/// Errors: a loader error, a `u8` batch (no batch transforms), or an empty loader.
pub fn get_preds(model: &dyn Model, dl: &dyn BatchSource) -> crate::Result<Preds> {
    get_preds_pass(model, dl, 0)
}

/// [`get_preds`] over pass `epoch` of `dl` (a different random draw for augmented loaders).
pub fn get_preds_pass(model: &dyn Model, dl: &dyn BatchSource, epoch: u64) -> crate::Result<Preds> {
    let device = model.var_store().device();
    let (mut probs, mut targets, mut losses) = (Vec::new(), Vec::new(), Vec::new());
    tch::no_grad(|| -> crate::Result<()> {
        for (i, batch) in dl.batches(epoch).enumerate() {
            let batch = batch.with_context(|| format!("batch {i} of the loader"))?;
            if batch.x.kind() == Kind::Uint8 {
                bail!("batch {i} is u8 images: the loader has no batch transforms (normalisation) to make model inputs");
            }
            let logits = model.forward_t(&batch.x.to_device(device), false).to_kind(Kind::Float);
            let y = batch.y.to_device(device);
            let logp = logits.log_softmax(-1, Kind::Float);
            losses.push(-logp.gather(1, &y.unsqueeze(1), false).squeeze_dim(1).to_device(Device::Cpu));
            probs.push(logp.exp().to_device(Device::Cpu));
            targets.push(y.to_device(Device::Cpu));
        }
        Ok(())
    })?;
    if probs.is_empty() {
        bail!("the loader yielded no batches");
    }
    Ok(Preds { probs: Tensor::cat(&probs, 0), targets: Tensor::cat(&targets, 0), losses: Tensor::cat(&losses, 0) })
}

/// Test-time augmentation over loaders (fastai `Learner.tta(n, beta, use_max)`):
/// `opts.n` passes over `augmented` (the same items, same order, with the training
/// item and batch transforms — fastai sets the dataset's split to training), averaged
/// (or maximum with `use_max`), blended with one pass over `plain` (the validation
/// loader): `(1 − beta)·aug + beta·plain`. Returns (probabilities (N, C), targets (N)).
///
/// Errors: as [`get_preds`]; loaders of different lengths.
pub fn tta(
    model: &dyn Model,
    plain: &dyn BatchSource,
    augmented: &dyn BatchSource,
    opts: &TtaOptions,
) -> crate::Result<(Tensor, Tensor)> {
    let mut augs = Vec::with_capacity(opts.n);
    for pass in 0..opts.n {
        augs.push(get_preds_pass(model, augmented, pass as u64)?.probs);
    }
    let p = get_preds(model, plain)?;
    if let Some(a) = augs.first()
        && a.size() != p.probs.size()
    {
        bail!("the augmented loader gives {:?} predictions, the plain one {:?}", a.size(), p.probs.size());
    }
    Ok((tta_combine(&p.probs, &augs, opts), p.targets))
}
