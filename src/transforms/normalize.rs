//! fastai `Normalize`: per-channel `(x − mean) / std` of a [0, 1] batch.

use anyhow::ensure;
use tch::Tensor;

/// ImageNet channel means (RGB, on [0, 1]), fastai `imagenet_stats`.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB, on [0, 1]), fastai `imagenet_stats`.
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Per-channel normalisation with statistics expressed on [0, 1] pixel values
/// (fastai `Normalize.from_stats(mean, std)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// RGB means on [0, 1].
    pub mean: [f64; 3],
    /// RGB standard deviations on [0, 1], all > 0.
    pub std: [f64; 3],
}

impl Default for Normalize {
    /// ImageNet statistics, as fastai's `cnn_learner`/`vision_learner` adds.
    fn default() -> Self {
        Normalize::imagenet()
    }
}

impl Normalize {
    /// ImageNet statistics ([`IMAGENET_MEAN`], [`IMAGENET_STD`]).
    pub fn imagenet() -> Self {
        Normalize { mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// Statistics on [0, 1] pixel values. Errors: a std that is not a positive finite
    /// number, or a non-finite mean, naming the channel.
    pub fn from_stats(mean: [f64; 3], std: [f64; 3]) -> crate::Result<Self> {
        for c in 0..3 {
            ensure!(mean[c].is_finite(), "Normalize: mean[{c}] must be finite, got {}", mean[c]);
            ensure!(std[c].is_finite() && std[c] > 0.0, "Normalize: std[{c}] must be positive, got {}", std[c]);
        }
        Ok(Normalize { mean, std })
    }

    /// Statistics given on 0..=255 pixel values, e.g. `from_pixel_stats([127.; 3],
    /// [128.; 3])` for the TensorFlow EfficientNet-Lite weights' `(x − 127) / 128`.
    /// Errors as [`Normalize::from_stats`].
    pub fn from_pixel_stats(mean: [f64; 3], std: [f64; 3]) -> crate::Result<Self> {
        Normalize::from_stats(mean.map(|m| m / 255.0), std.map(|s| s / 255.0))
    }

    fn columns(&self, x: &Tensor) -> (Tensor, Tensor) {
        (column(self.mean, x), column(self.std, x))
    }

    /// `(x − mean) / std` for a float (N, 3, H, W) batch in [0, 1] on any device.
    /// Errors: a batch that is not float or does not have 3 channels.
    pub fn encode(&self, x: &Tensor) -> crate::Result<Tensor> {
        self.check(x)?;
        let (m, s) = self.columns(x);
        Ok((x - m) / s)
    }

    /// `x · scale` then normalised, as `x · (scale/std) − mean/std` (folds the u8 →
    /// [0, 1] division into the normalisation), IN PLACE: `x` must be a tensor nothing
    /// else reads (the fresh output of a resample), and is returned.
    pub(crate) fn encode_scaled_(&self, mut x: Tensor, scale: f64) -> crate::Result<Tensor> {
        self.check(&x)?;
        let a = column(std::array::from_fn(|c| scale / self.std[c]), &x);
        let b = column(std::array::from_fn(|c| -self.mean[c] / self.std[c]), &x);
        let _ = x.g_mul_(&a).g_add_(&b);
        Ok(x)
    }

    /// The inverse, `x · std + mean`, back to [0, 1] (fastai `Normalize.decodes`, used
    /// by `show_batch`). Errors as [`Normalize::encode`].
    pub fn decode(&self, x: &Tensor) -> crate::Result<Tensor> {
        self.check(x)?;
        let (m, s) = self.columns(x);
        Ok(x * s + m)
    }

    fn check(&self, x: &Tensor) -> crate::Result<()> {
        let size = x.size();
        ensure!(size.len() == 4 && size[1] == 3, "Normalize: expected a (N, 3, H, W) batch, got shape {size:?}");
        ensure!(x.is_floating_point(), "Normalize: expected a float batch, got {:?}", x.kind());
        Ok(())
    }
}

/// `v` as a (1, 3, 1, 1) tensor on `x`'s device and kind.
fn column(v: [f64; 3], x: &Tensor) -> Tensor {
    Tensor::from_slice(&v.map(|v| v as f32)).view([1, 3, 1, 1]).to_device(x.device()).to_kind(x.kind())
}
