//! Batch transforms (fastai `batch_tfms`): run on the batch's device after collation.
//!
//! - [`augment`]: fastai's `aug_transforms` parameters and their random draws.
//! - [`affine`]: the coordinate maps, composed into one per image, and the one resample.
//! - [`lighting`]: brightness and contrast in logit space, fused.
//! - [`normalize`]: per-channel normalisation (ImageNet by default).
//! - [`pipeline`]: [`BatchTfms`], the stage the data loaders call.

pub mod affine;
pub mod augment;
pub mod lighting;
pub mod normalize;
pub mod pipeline;

pub use augment::{AugTransforms, Crop, ImageAug, Interpolation, PadMode, aug_transforms};
pub use normalize::Normalize;
pub use pipeline::BatchTfms;

use crate::util::rng::Rng;
use tch::Tensor;

/// A transform applied to a whole collated batch on its device (fastai's `after_batch`
/// stage). The data loaders call it on every batch they yield.
pub trait BatchTransform: Send + Sync {
    /// Transforms `x`, a batch of shape (N, 3, H, W) — `u8` 0..=255 as it leaves the
    /// item pipeline — into the model's input, typically `f32` (N, 3, size, size).
    /// `train` is true for training batches (random augmentation), false for validation
    /// (deterministic). Random parameters come from `rng`.
    fn apply(&self, x: &Tensor, train: bool, rng: &mut Rng) -> crate::Result<Tensor>;
}
