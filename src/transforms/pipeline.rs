//! The batch-transform stage (fastai `batch_tfms = [*aug_transforms(...), Normalize]`):
//! geometry in one resample, lighting in one pass, then normalisation.

use anyhow::ensure;
use tch::{Kind, Tensor};

use super::affine::{IDENTITY, Mat3, Sampling, image_map, resample, stage_maps};
use super::augment::{AugTransforms, ImageAug};
use super::lighting::{brightness, contrast, lighting};
use super::normalize::Normalize;
use super::BatchTransform;
use crate::util::rng::Rng;

/// Augmentation + resize to `size` + [`Normalize`], implementing [`BatchTransform`].
///
/// Training batches: per-image random [`AugTransforms`] draws, composed into ONE map per
/// image and sampled with ONE `grid_sampler` call for the batch, then brightness and
/// contrast fused in one logit-space pass, then normalisation. Validation batches (and
/// every batch when `aug` is `None`): the deterministic resize to `size` (a centred
/// square crop first when `min_scale` < 1, as fastai) and normalisation.
///
/// Input: (N, 3, H, W) `u8` 0..=255 (or a float batch already on [0, 1]) on any device;
/// output: `f32` (N, 3, size, size) normalised, on the same device.
///
/// Where kestrel departs from fastai (`aug_transforms` + `Normalize`):
/// - random draws come from kestrel's seeded CPU generator, so the numbers differ from a
///   fastai run with the same seed (the distributions and probabilities are fastai's);
/// - with `min_scale` < 1 fastai resamples twice (the affine transforms at the items'
///   size, then `RandomResizedCropGPU`); kestrel composes the crop into the same map and
///   resamples once;
/// - a `size` larger than the items is refused instead of upsampling;
/// - maps that only permute pixels (flips, dihedral, identity at the same size) use exact
///   index operations; u8 batches are sampled on the 0..255 scale and scaled to [0, 1]
///   afterwards (sampling is linear, so only rounding differs);
/// - fastai's area pre-shrink before a bilinear downsample is skipped when it would take
///   off less than 10 % of the resolution, as for 460 → 224 (see
///   [`super::affine::MIN_PRESHRINK`]);
/// - fastai's `xtra_tfms` are not supported.
#[derive(Debug, Clone)]
pub struct BatchTfms {
    aug: Option<AugTransforms>,
    size: i64,
    normalize: Normalize,
}

impl BatchTfms {
    /// The stage for output side `size` (pixels) with optional augmentation.
    ///
    /// Errors: `size` ≤ 0, invalid augmentation parameters ([`AugTransforms::validate`]),
    /// or an `aug.size` that is set and differs from `size`.
    pub fn new(aug: Option<AugTransforms>, size: i64, normalize: Normalize) -> crate::Result<Self> {
        ensure!(size > 0, "batch transforms: size must be positive, got {size}");
        if let Some(a) = &aug {
            a.validate()?;
            if let Some(s) = a.size {
                ensure!(s == size, "batch transforms: aug_transforms size {s} differs from the output size {size}");
            }
        }
        Ok(BatchTfms { aug, size, normalize })
    }

    /// The output side in pixels.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// The augmentation parameters, if any.
    pub fn aug(&self) -> Option<&AugTransforms> {
        self.aug.as_ref()
    }

    /// The normalisation statistics (for `show_batch` to decode).
    pub fn normalize(&self) -> &Normalize {
        &self.normalize
    }

    /// How the resample samples (the augmentation's mode, padding and `align_corners`, else fastai's defaults).
    pub(crate) fn sampling(&self) -> Sampling {
        self.aug.as_ref().map_or_else(Sampling::default, |a| Sampling {
            mode: a.mode,
            pad_mode: a.pad_mode,
            align_corners: a.align_corners,
        })
    }

    /// The per-image parameters of an `n`-image batch of `h`×`w` items: random draws
    /// from `rng` when `train` and augmenting, else the deterministic validation ones.
    pub fn params(&self, n: usize, h: i64, w: i64, train: bool, rng: &mut Rng) -> Vec<ImageAug> {
        match &self.aug {
            Some(a) if train => a.draw(n, h, w, rng),
            Some(a) => a.valid_params(n, h, w),
            None => vec![ImageAug::default(); n],
        }
    }

    /// Checks `x` and returns (its float version on the 0..255 or 0..1 scale, the factor
    /// to [0, 1], H, W).
    fn prepare(&self, x: &Tensor, n: usize) -> crate::Result<(Tensor, f64, i64, i64)> {
        let size = x.size();
        ensure!(size.len() == 4 && size[1] == 3, "batch transforms: expected a (N, 3, H, W) batch, got shape {size:?}");
        ensure!(size[0] == n as i64, "batch transforms: {n} parameter sets for a batch of {}", size[0]);
        let (h, w) = (size[2], size[3]);
        ensure!(
            self.size <= h && self.size <= w,
            "batch transforms: size {} is larger than the presized items ({h}×{w}); presize the items \
             (item_tfms Resize, kestrel's --presize) to at least {} px",
            self.size,
            self.size
        );
        Ok(match x.kind() {
            Kind::Uint8 => (x.to_kind(Kind::Float), 1.0 / 255.0, h, w),
            k if x.is_floating_point() => (x.to_kind(if k == Kind::Double { k } else { Kind::Float }), 1.0, h, w),
            k => anyhow::bail!("batch transforms: expected a u8 (0..=255) or float batch, got {k:?}"),
        })
    }

    /// Applies the parameters `params` (one per image) to `x` fused: one resample, one
    /// lighting pass, normalisation. Shapes and errors as [`BatchTransform::apply`], plus
    /// a `params.len()` different from N.
    pub fn apply_params(&self, x: &Tensor, params: &[ImageAug]) -> crate::Result<Tensor> {
        let (x, scale, h, w) = self.prepare(x, params.len())?;
        let maps: Vec<Mat3> = params.iter().map(|p| image_map(p, h, w)).collect();
        // `resample` always returns a fresh tensor, so the passes below work in place.
        let mut y = resample(&x, &maps, self.size, self.size, self.sampling())?;
        if params.iter().all(ImageAug::lighting_is_identity) {
            return self.normalize.encode_scaled_(y, scale);
        }
        let (b, c): (Vec<f64>, Vec<f64>) = params.iter().map(|p| (p.brightness, p.contrast)).unzip();
        if scale != 1.0 {
            let _ = y.g_mul_scalar_(scale);
        }
        self.normalize.encode_scaled_(lighting(&y, &b, &c)?, 1.0)
    }

    /// The same result computed op by op, as without fastai's composition: one resample
    /// per geometric transform that some image uses (in order warp, flip/dihedral,
    /// rotate, zoom, crop), separate brightness and contrast passes, then normalisation.
    /// With `at_item_size` false every resample outputs `size` (fastai's uncomposed
    /// `aug_transforms`, each transform having `size=size`: the first one resizes); with
    /// it true the intermediate images keep the items' size and the last resample
    /// resizes. The baseline of the fusion benchmark and quality test; for square items
    /// it is the same transform as [`BatchTfms::apply_params`] up to resampling loss.
    /// Errors as [`BatchTfms::apply_params`].
    pub fn apply_op_by_op(&self, x: &Tensor, params: &[ImageAug], at_item_size: bool) -> crate::Result<Tensor> {
        let (x, scale, h, w) = self.prepare(x, params.len())?;
        let stages: Vec<[Mat3; 5]> = params.iter().map(|p| stage_maps(p, h, w)).collect();
        let mut active: Vec<usize> = (0..5).filter(|&k| stages.iter().any(|s| s[k] != IDENTITY)).collect();
        if active.is_empty() {
            active.push(4);
        }
        let mut y = x;
        for (i, &k) in active.iter().enumerate() {
            let maps: Vec<Mat3> = stages.iter().map(|s| s[k]).collect();
            let (oh, ow) = if at_item_size && i + 1 < active.len() { (h, w) } else { (self.size, self.size) };
            y = resample(&y, &maps, oh, ow, self.sampling())?;
        }
        let mut y = y * scale;
        if params.iter().any(|p| p.brightness != 0.5) {
            y = brightness(&y, &params.iter().map(|p| p.brightness).collect::<Vec<_>>())?;
        }
        if params.iter().any(|p| p.contrast != 1.0) {
            y = contrast(&y, &params.iter().map(|p| p.contrast).collect::<Vec<_>>())?;
        }
        self.normalize.encode(&y)
    }
}

impl BatchTransform for BatchTfms {
    /// Draws the parameters ([`BatchTfms::params`]) and applies them fused
    /// ([`BatchTfms::apply_params`]). Errors: a batch that is not (N, 3, H, W) u8/float,
    /// or items smaller than `size` ("size ... is larger than the presized items").
    fn apply(&self, x: &Tensor, train: bool, rng: &mut Rng) -> crate::Result<Tensor> {
        let size = x.size();
        ensure!(size.len() == 4, "batch transforms: expected a (N, 3, H, W) batch, got shape {size:?}");
        let params = self.params(size[0] as usize, size[2], size[3], train, rng);
        self.apply_params(x, &params)
    }
}
