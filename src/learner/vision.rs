//! fastai `vision_learner`: a [`Learner`] for image classification from `DataLoaders` and
//! an architecture, with the pretrained body loaded, fastai's head, cross-entropy loss and
//! `error_rate`; plus the batch transforms that feed the model its own normalisation.

use super::{CrossEntropyLossFlat, Learner};
use crate::metrics::error_rate;
use crate::models::weights::load_state_dict;
use crate::models::{Arch, Meta, VisionModel};
use crate::transforms::{AugTransforms, BatchTfms, Normalize, aug_transforms};
use anyhow::Context;
use std::path::Path;

/// The model's input normalisation ([`Meta::normalization`], 0..1 units) as a batch
/// [`Normalize`]: ImageNet statistics for the ResNets, `(x − 127) / 128` on 0..=255 for
/// EfficientNet-Lite (what its TensorFlow weights were trained with).
///
/// Errors: a non-positive std (impossible for the built-in architectures).
pub fn model_normalize(meta: &Meta) -> crate::Result<Normalize> {
    let n = meta.normalization;
    Normalize::from_stats(n.mean.map(f64::from), n.std.map(f64::from))
}

/// fastai `batch_tfms=[*aug_transforms(size=size, min_scale=min_scale),
/// Normalize.from_stats(*stats)]` with `arch`'s own statistics: training batches are
/// augmented (random-resized crop, flip, rotate, zoom, warp, lighting), validation batches
/// only resized; output `f32` (N, 3, size, size), normalised.
///
/// Errors: `size` ≤ 0 or `min_scale` outside (0, 1].
pub fn vision_batch_tfms(arch: Arch, size: i64, min_scale: f64) -> crate::Result<BatchTfms> {
    vision_aug_batch_tfms(arch, aug_transforms().with_size(size).with_min_scale(min_scale))
}

/// fastai `batch_tfms=[*aug, Normalize.from_stats(*stats)]` with any [`AugTransforms`]
/// (e.g. from the command line's `AugOpts`) and `arch`'s own statistics; the output side
/// is `aug.size`.
///
/// Errors: `aug.size` unset, or a parameter out of range (named).
pub fn vision_aug_batch_tfms(arch: Arch, aug: AugTransforms) -> crate::Result<BatchTfms> {
    let size = aug.size.context("the batch augmentation needs an output size (aug_transforms(size=...))")?;
    BatchTfms::new(Some(aug), size, model_normalize(&arch.meta())?)
}

/// fastai `vision_learner(dls, arch, metrics=error_rate, pretrained=...)`: a
/// [`VisionModel`] with one output per class of `dls.vocab`, on the device of the training
/// batches, its body loaded from the ImageNet weight file `pretrained` (None: random
/// initialisation, fastai `pretrained=False`), `CrossEntropyLossFlat`, fastai's Adam and
/// the `error_rate` metric. Body frozen or not is decided by the fit (`fine_tune` freezes).
/// The new head (and a non-pretrained body) is initialised from torch's global generator:
/// call `tch::manual_seed(seed)` first for a repeatable run (fastai `set_seed`).
///
/// Errors: an empty vocabulary; an unreadable weight file or one that does not fit
/// `arch` (the mismatching names are listed).
pub fn vision_learner(dls: crate::data::DataLoaders, arch: Arch, pretrained: Option<&Path>) -> crate::Result<Learner> {
    let n_out = dls.vocab.len() as i64;
    let mut model = VisionModel::new(arch, n_out, dls.train.device())?;
    if let Some(file) = pretrained {
        let tensors = load_state_dict(file)?;
        model.load_pretrained_body(tensors).with_context(|| format!("loading {}", file.display()))?;
    }
    Ok(Learner::new(dls, Box::new(model), Box::new(CrossEntropyLossFlat))?.with_metrics(vec![error_rate()]))
}
