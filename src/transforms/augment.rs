//! fastai's `aug_transforms`: the parameters of the random batch augmentation and the
//! per-image random draws (`vision/augment.py`: `Flip`, `Dihedral`, `Rotate`, `Zoom`,
//! `Warp`, `Brightness`, `Contrast`, `RandomResizedCropGPU`).
//!
//! The draws are made on the CPU from kestrel's seeded [`Rng`] (never from the device's
//! generator), so a seeded run gives the same augmentation on every device. The
//! distributions and probabilities are fastai's; the order of the draws is kestrel's own
//! (per image: flip/dihedral, rotate, zoom, warp, brightness, contrast; then the crop for
//! the batch), so the numbers differ from a fastai run with the same seed.

use anyhow::{bail, ensure};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::util::rng::Rng;

/// Interpolation of `grid_sample` (PyTorch `mode`): bilinear (fastai's default),
/// nearest or bicubic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Linear in x and y (fastai's default).
    Bilinear,
    /// The nearest pixel.
    Nearest,
    /// Cubic convolution (PyTorch `bicubic`, A = −0.75).
    Bicubic,
}

impl Interpolation {
    /// libtorch's `interpolation_mode` code for `grid_sampler`.
    pub(crate) fn code(self) -> i64 {
        match self {
            Interpolation::Bilinear => 0,
            Interpolation::Nearest => 1,
            Interpolation::Bicubic => 2,
        }
    }
}

/// What `grid_sample` reads outside the image (fastai `PadMode`): zeros, the border
/// pixels, or the image mirrored at its edges (reflection, fastai's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Zeros outside the image.
    Zeros,
    /// The nearest border pixel.
    Border,
    /// The image mirrored at its edges (fastai's default).
    Reflection,
}

impl PadMode {
    /// libtorch's `padding_mode` code for `grid_sampler`.
    pub(crate) fn code(self) -> i64 {
        match self {
            PadMode::Zeros => 0,
            PadMode::Border => 1,
            PadMode::Reflection => 2,
        }
    }
}

/// fastai's `aug_transforms(...)` parameters, with its names and defaults.
///
/// Build with [`aug_transforms`] (or `AugTransforms::default()`) and the `with_*`
/// methods, e.g. `aug_transforms().with_size(224).with_min_scale(0.75)`.
/// [`crate::transforms::BatchTfms`] applies them to a batch in one resample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AugTransforms {
    /// Output side in pixels (square `size`×`size`); `None` keeps the items' size.
    pub size: Option<i64>,
    /// Minimum fraction of the item's area kept by the random-resized crop
    /// (`RandomResizedCropGPU`, ratio 1:1); 1.0 = no crop. In (0, 1].
    pub min_scale: f64,
    /// Random horizontal flip with probability 0.5.
    pub do_flip: bool,
    /// With `do_flip`, use a random dihedral transform (8 flips/90° rotations) instead.
    pub flip_vert: bool,
    /// Maximum rotation in degrees (uniform in ±max_rotate·mult).
    pub max_rotate: f64,
    /// Minimum zoom factor (1.0 = none; < 1 zooms out).
    pub min_zoom: f64,
    /// Maximum zoom factor (zoom uniform in [min_zoom, max_zoom]).
    pub max_zoom: f64,
    /// Maximum perspective warp magnitude (uniform in ±max_warp·mult, in units of the
    /// half-image, per axis).
    pub max_warp: f64,
    /// Maximum change of brightness and contrast (before `mult`), in [0, 1).
    pub max_lighting: f64,
    /// Probability that each of rotate, zoom, warp-x and warp-y is applied to an image.
    pub p_affine: f64,
    /// Probability that each of brightness and contrast is changed for an image.
    pub p_lighting: f64,
    /// Resampling interpolation.
    pub mode: Interpolation,
    /// Padding for samples outside the image.
    pub pad_mode: PadMode,
    /// PyTorch `align_corners`: ±1 are the centres of the corner pixels when true.
    pub align_corners: bool,
    /// Multiplies `max_rotate`, `max_lighting` and `max_warp`.
    pub mult: f64,
    /// Draw one set of parameters for the whole batch instead of one per image.
    pub batch: bool,
}

impl Default for AugTransforms {
    fn default() -> Self {
        AugTransforms {
            size: None,
            min_scale: 1.0,
            do_flip: true,
            flip_vert: false,
            max_rotate: 10.0,
            min_zoom: 1.0,
            max_zoom: 1.1,
            max_warp: 0.2,
            max_lighting: 0.2,
            p_affine: 0.75,
            p_lighting: 0.75,
            mode: Interpolation::Bilinear,
            pad_mode: PadMode::Reflection,
            align_corners: true,
            mult: 1.0,
            batch: false,
        }
    }
}

/// fastai's `aug_transforms()` with its defaults; chain `with_*` to change them.
pub fn aug_transforms() -> AugTransforms {
    AugTransforms::default()
}

macro_rules! with {
    ($($name:ident : $field:ident : $t:ty),* $(,)?) => {$(
        #[doc = concat!("Sets `", stringify!($field), "` (see the field).")]
        pub fn $name(mut self, v: $t) -> Self {
            self.$field = v;
            self
        }
    )*};
}

impl AugTransforms {
    with!(with_min_scale: min_scale: f64, with_do_flip: do_flip: bool, with_flip_vert: flip_vert: bool,
        with_max_rotate: max_rotate: f64, with_min_zoom: min_zoom: f64, with_max_zoom: max_zoom: f64,
        with_max_warp: max_warp: f64, with_max_lighting: max_lighting: f64, with_p_affine: p_affine: f64,
        with_p_lighting: p_lighting: f64, with_mode: mode: Interpolation, with_pad_mode: pad_mode: PadMode,
        with_align_corners: align_corners: bool, with_mult: mult: f64, with_batch: batch: bool);

    /// Sets the output size (`size`×`size` pixels).
    pub fn with_size(mut self, size: i64) -> Self {
        self.size = Some(size);
        self
    }

    /// Checks every parameter. Errors name the parameter and its value: a non-positive
    /// `size`, `min_scale` outside (0, 1], a non-positive `min_zoom` or `mult`,
    /// `max_zoom` < `min_zoom`, a negative `max_rotate`/`max_warp`, `max_lighting·mult`
    /// outside [0, 1), probabilities outside [0, 1], or any NaN.
    pub fn validate(&self) -> crate::Result<()> {
        if let Some(s) = self.size {
            ensure!(s > 0, "aug_transforms: size must be positive, got {s}");
        }
        let finite = [
            ("min_scale", self.min_scale),
            ("max_rotate", self.max_rotate),
            ("min_zoom", self.min_zoom),
            ("max_zoom", self.max_zoom),
            ("max_warp", self.max_warp),
            ("max_lighting", self.max_lighting),
            ("p_affine", self.p_affine),
            ("p_lighting", self.p_lighting),
            ("mult", self.mult),
        ];
        for (name, v) in finite {
            ensure!(v.is_finite(), "aug_transforms: {name} must be a finite number, got {v}");
        }
        ensure!(
            self.min_scale > 0.0 && self.min_scale <= 1.0,
            "aug_transforms: min_scale must be in (0, 1] (a fraction of the item's area), got {}",
            self.min_scale
        );
        ensure!(self.min_zoom > 0.0, "aug_transforms: min_zoom must be positive (a scale factor), got {}", self.min_zoom);
        ensure!(
            self.max_zoom >= self.min_zoom,
            "aug_transforms: max_zoom ({}) must be >= min_zoom ({})",
            self.max_zoom,
            self.min_zoom
        );
        ensure!(self.mult > 0.0, "aug_transforms: mult must be positive (a scale factor), got {}", self.mult);
        ensure!(self.max_rotate >= 0.0, "aug_transforms: max_rotate must be >= 0 degrees, got {}", self.max_rotate);
        ensure!(self.max_warp >= 0.0, "aug_transforms: max_warp must be >= 0, got {}", self.max_warp);
        let ml = self.max_lighting * self.mult;
        if !(0.0..1.0).contains(&ml) {
            bail!("aug_transforms: max_lighting × mult must be in [0, 1), got {ml} (on the command line: --max-lighting, with mult 1)");
        }
        for (name, p) in [("p_affine", self.p_affine), ("p_lighting", self.p_lighting)] {
            ensure!((0.0..=1.0).contains(&p), "aug_transforms: {name} is a probability and must be in [0, 1], got {p}");
        }
        Ok(())
    }

    /// Draws the random parameters of a batch of `n` items of `h`×`w` pixels: one
    /// [`ImageAug`] per image (the same one for all when `batch`). The random-resized
    /// crop (when `min_scale` < 1) is drawn once for the whole batch, as fastai's
    /// `RandomResizedCropGPU` does.
    pub fn draw(&self, n: usize, h: i64, w: i64, rng: &mut Rng) -> Vec<ImageAug> {
        let mut out: Vec<ImageAug> = Vec::with_capacity(n);
        for _ in 0..n {
            if self.batch && !out.is_empty() {
                out.push(out[0].clone());
            } else {
                out.push(self.draw_one(rng));
            }
        }
        if self.min_scale < 1.0 {
            let crop = random_resized_crop(h, w, self.min_scale, rng);
            out.iter_mut().for_each(|a| a.crop = Some(crop));
        }
        out
    }

    fn draw_one(&self, rng: &mut Rng) -> ImageAug {
        let mut a = ImageAug::default();
        if self.do_flip {
            // fastai `flip_mat` / `dihedral_mat`, p = 0.5. A flip is dihedral index 1.
            let k = if self.flip_vert { rng.random_range(0..8usize) } else { 1 };
            a.dihedral = masked(rng, k as f64, 0.0, 0.5) as usize;
        }
        let (max_rotate, max_warp, max_lighting) =
            (self.max_rotate * self.mult, self.max_warp * self.mult, self.max_lighting * self.mult);
        if max_rotate != 0.0 {
            let deg = uniform(rng, -max_rotate, max_rotate);
            a.rotate = masked(rng, deg, 0.0, self.p_affine);
        }
        if self.min_zoom < 1.0 || self.max_zoom > 1.0 {
            let z = uniform(rng, self.min_zoom, self.max_zoom);
            a.zoom = masked(rng, z, 1.0, self.p_affine);
            a.zoom_col = uniform(rng, 0.0, 1.0);
            a.zoom_row = uniform(rng, 0.0, 1.0);
        }
        if max_warp != 0.0 {
            let x = uniform(rng, -max_warp, max_warp);
            a.warp_x = masked(rng, x, 0.0, self.p_affine);
            let y = uniform(rng, -max_warp, max_warp);
            a.warp_y = masked(rng, y, 0.0, self.p_affine);
        }
        if max_lighting != 0.0 {
            let b = uniform(rng, 0.5 * (1.0 - max_lighting), 0.5 * (1.0 + max_lighting));
            a.brightness = masked(rng, b, 0.5, self.p_lighting);
            let l = (1.0 - max_lighting).ln();
            let c = uniform(rng, l, -l).exp();
            a.contrast = masked(rng, c, 1.0, self.p_lighting);
        }
        a
    }

    /// The deterministic parameters of a validation batch: identity, except fastai's
    /// centre crop to a square when `min_scale` < 1 (`RandomResizedCropGPU` on the
    /// validation set); otherwise the whole item is resized to `size`.
    pub fn valid_params(&self, n: usize, h: i64, w: i64) -> Vec<ImageAug> {
        let crop = (self.min_scale < 1.0).then(|| center_square_crop(h, w));
        vec![ImageAug { crop, ..ImageAug::default() }; n]
    }
}

/// A crop in input pixels: rows `top..top+height`, columns `left..left+width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    /// First row (pixels).
    pub top: i64,
    /// First column (pixels).
    pub left: i64,
    /// Rows kept.
    pub height: i64,
    /// Columns kept.
    pub width: i64,
}

/// The augmentation parameters of one image; `ImageAug::default()` is the identity.
/// Tests and `show_batch --unique` can set them directly.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageAug {
    /// fastai dihedral index 0..8 (0 = identity, 1 = horizontal flip; see
    /// [`crate::transforms::affine::dihedral_mat`]).
    pub dihedral: usize,
    /// Rotation in degrees (fastai `rotate_mat`: positive turns the content clockwise
    /// on screen).
    pub rotate: f64,
    /// Zoom factor (> 1 zooms in; fastai `zoom_mat` scales coordinates by 1/zoom).
    pub zoom: f64,
    /// Zoom centre as a fraction of the width, in [0, 1] (fastai `col_pct`).
    pub zoom_col: f64,
    /// Zoom centre as a fraction of the height, in [0, 1] (fastai `row_pct`).
    pub zoom_row: f64,
    /// Perspective warp magnitude along x (fastai `_WarpCoord` `x_t`, half-image units).
    pub warp_x: f64,
    /// Perspective warp magnitude along y (fastai `_WarpCoord` `y_t`, half-image units).
    pub warp_y: f64,
    /// Crop of the input taken before resizing to the output size (fastai
    /// `RandomResizedCropGPU`), or `None` for the whole item.
    pub crop: Option<Crop>,
    /// Brightness in (0, 1); 0.5 leaves the image unchanged (fastai `_BrightnessLogit`).
    pub brightness: f64,
    /// Contrast factor in logit space; 1.0 leaves the image unchanged.
    pub contrast: f64,
}

impl Default for ImageAug {
    fn default() -> Self {
        ImageAug {
            dihedral: 0,
            rotate: 0.0,
            zoom: 1.0,
            zoom_col: 0.5,
            zoom_row: 0.5,
            warp_x: 0.0,
            warp_y: 0.0,
            crop: None,
            brightness: 0.5,
            contrast: 1.0,
        }
    }
}

impl ImageAug {
    /// True when the lighting is unchanged.
    pub fn lighting_is_identity(&self) -> bool {
        self.brightness == 0.5 && self.contrast == 1.0
    }
}

fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// fastai `mask_tensor`: keeps `v` with probability `p`, else `neutral`.
fn masked(rng: &mut Rng, v: f64, neutral: f64, p: f64) -> f64 {
    if p == 1.0 || rng.random::<f64>() < p { v } else { neutral }
}

/// fastai `RandomResizedCropGPU.before_call` with ratio (1, 1) and max_scale 1: up to
/// ten tries of a square of area U(min_scale, 1)·h·w at a uniform position, else the
/// centred square.
fn random_resized_crop(h: i64, w: i64, min_scale: f64, rng: &mut Rng) -> Crop {
    for _ in 0..10 {
        let area = uniform(rng, min_scale, 1.0) * (w * h) as f64;
        // ratio = exp(U(log 1, log 1)) = 1; Python's round() rounds half to even.
        let side = area.sqrt().round_ties_even() as i64;
        if side <= w && side <= h {
            let top = rng.random_range(0..=h - side);
            let left = rng.random_range(0..=w - side);
            return Crop { top, left, height: side, width: side };
        }
    }
    center_square_crop(h, w)
}

/// fastai's fallback/validation crop for ratio (1, 1): the centred largest square.
fn center_square_crop(h: i64, w: i64) -> Crop {
    let side = h.min(w);
    Crop { top: (h - side) / 2, left: (w - side) / 2, height: side, width: side }
}
