//! Presizing item transforms on the CPU (fastai `Resize`, `RandomResizedCrop`), with
//! antialiased bilinear resampling as PIL's `BILINEAR` that fastai uses.

use anyhow::{Context, bail};
use fast_image_resize::images::{CroppedImage, Image as FrImage};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::Rng;
use std::cell::RefCell;

/// How `Resize` reaches the target aspect ratio (fastai `ResizeMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMethod {
    /// Crop the largest region of the target aspect ratio: at a random place on the
    /// training set, in the centre on validation; then resize.
    Crop,
    /// Pad the image to the target aspect ratio (the image at a random place on the
    /// training set, centred on validation), then resize.
    Pad,
    /// Resize the whole image to the target size, distorting the aspect ratio.
    Squish,
}

/// What fills the padding of [`ResizeMethod::Pad`] (fastai `PadMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    /// Black.
    Zeros,
    /// The image mirrored at its edge (edge pixel not repeated).
    Reflection,
    /// The edge pixel repeated.
    Border,
}

/// An item transform: runs on every decoded image on the CPU workers, before
/// collation. All of them output exactly `size` = (height, width).
#[derive(Debug, Clone, PartialEq)]
pub enum ItemTfm {
    /// fastai `Resize(size, method=crop, pad_mode=reflection)`; the book's presizing is
    /// `Resize(460)`.
    Resize {
        /// Output (height, width) in pixels.
        size: (u32, u32),
        /// Crop, pad or squish.
        method: ResizeMethod,
        /// Padding for `Pad`.
        pad_mode: PadMode,
    },
    /// fastai `RandomResizedCrop(size, min_scale=0.08, ratio=(3/4, 4/3), val_xtra=0.14)`:
    /// on training, a random region of `min_scale..max_scale` of the area and an aspect
    /// ratio drawn log-uniformly in `ratio`, resized to `size`; on validation, the whole
    /// image resized to `size + xtra` (xtra = `val_xtra * max(size)` rounded up to a
    /// multiple of 8), then centre-cropped to `size`.
    RandomResizedCrop {
        /// Output (height, width) in pixels.
        size: (u32, u32),
        /// Smallest fraction of the area kept.
        min_scale: f64,
        /// Largest fraction of the area kept.
        max_scale: f64,
        /// Range of aspect ratios (width / height).
        ratio: (f64, f64),
        /// Extra margin on validation, as a fraction of the size.
        val_xtra: f64,
    },
}

/// The largest presize kestrel accepts, in pixels (the side of the square every photo is
/// resized to before the batch transforms; the book uses 460). It bounds the memory of a
/// batch: 32 photos presized to 2048 px are 0.4 GB as bytes, 1.6 GB as float32.
pub const MAX_PRESIZE: u32 = 2048;

impl ItemTfm {
    /// fastai `Resize(size)`: square, `crop`, reflection padding.
    pub fn resize(size: u32) -> Self {
        Self::Resize { size: (size, size), method: ResizeMethod::Crop, pad_mode: PadMode::Reflection }
    }

    /// fastai `RandomResizedCrop(size)` with its defaults.
    pub fn random_resized_crop(size: u32, min_scale: f64) -> Self {
        Self::RandomResizedCrop { size: (size, size), min_scale, max_scale: 1.0, ratio: (0.75, 4.0 / 3.0), val_xtra: 0.14 }
    }

    /// The validation presize of a model file or ONNX metadata: fastai `Resize(presize,
    /// method, pad_mode)` square, from their names (`crop`/`pad`/`squish`;
    /// `zeros`/`reflection`/`border`).
    ///
    /// Errors: a presize of 0 or above [`MAX_PRESIZE`] (a model file is untrusted input:
    /// its presize sets the size of every buffer of the pipeline); an unknown method or
    /// padding mode, naming it.
    pub fn presize(presize: u32, method: &str, pad_mode: &str) -> crate::Result<Self> {
        if presize == 0 || presize > MAX_PRESIZE {
            bail!("presize {presize} in the model file: expected 1 to {MAX_PRESIZE} pixels");
        }
        let method = match method {
            "crop" => ResizeMethod::Crop,
            "pad" => ResizeMethod::Pad,
            "squish" => ResizeMethod::Squish,
            m => bail!("unknown resize method '{m}' in the model file (crop, pad or squish)"),
        };
        let pad_mode = match pad_mode {
            "zeros" => PadMode::Zeros,
            "reflection" => PadMode::Reflection,
            "border" => PadMode::Border,
            m => bail!("unknown padding mode '{m}' in the model file (zeros, reflection or border)"),
        };
        Ok(Self::Resize { size: (presize, presize), method, pad_mode })
    }

    /// Output (height, width).
    pub fn size(&self) -> (u32, u32) {
        match self {
            Self::Resize { size, .. } | Self::RandomResizedCrop { size, .. } => *size,
        }
    }

    /// A one-line description for `summary`.
    pub fn describe(&self) -> String {
        match self {
            Self::Resize { size, method, pad_mode } => {
                format!("Resize({}x{}, method={method:?}, pad_mode={pad_mode:?})", size.0, size.1)
            }
            Self::RandomResizedCrop { size, min_scale, .. } => {
                format!("RandomResizedCrop({}x{}, min_scale={min_scale})", size.0, size.1)
            }
        }
    }

    /// Applies the transform to `img`; `train` selects the random (training) or the
    /// deterministic (validation) behaviour; random draws come from `rng`.
    ///
    /// Errors: a zero-sized image or target.
    pub fn apply(&self, img: &RgbImage, train: bool, rng: &mut impl Rng) -> crate::Result<RgbImage> {
        let (w, h) = img.dimensions();
        let (out_h, out_w) = self.size();
        if w == 0 || h == 0 || out_w == 0 || out_h == 0 {
            bail!("cannot resize a {w}x{h} image to {out_w}x{out_h}");
        }
        match *self {
            Self::Resize { method: ResizeMethod::Squish, .. } => resize(img, (0, 0, w, h), out_w, out_h),
            Self::Resize { method, pad_mode, .. } => {
                let (pw, ph) = if train { (rng.random::<f64>(), rng.random::<f64>()) } else { (0.5, 0.5) };
                let (rw, rh) = (w as f64 / out_w as f64, h as f64 / out_h as f64);
                let m = if method == ResizeMethod::Pad { rw.max(rh) } else { rw.min(rh) };
                let (cw, ch) = (((m * out_w as f64) as i64).max(1), ((m * out_h as f64) as i64).max(1));
                let left = (pw * (w as i64 - cw) as f64) as i64;
                let top = (ph * (h as i64 - ch) as f64) as i64;
                if left >= 0 && top >= 0 && left + cw <= w as i64 && top + ch <= h as i64 {
                    resize(img, (left as u32, top as u32, cw as u32, ch as u32), out_w, out_h)
                } else {
                    let padded = crop_pad(img, left, top, cw as u32, ch as u32, pad_mode);
                    resize(&padded, (0, 0, cw as u32, ch as u32), out_w, out_h)
                }
            }
            Self::RandomResizedCrop { min_scale, max_scale, ratio, val_xtra, .. } => {
                if !train {
                    let xtra = ((out_w.max(out_h) as f64 * val_xtra / 8.0).ceil() * 8.0) as u32;
                    let big = resize(img, (0, 0, w, h), out_w + xtra, out_h + xtra)?;
                    return Ok(crop_pad(&big, (xtra / 2) as i64, (xtra / 2) as i64, out_w, out_h, PadMode::Zeros));
                }
                let (wf, hf) = (w as f64, h as f64);
                for _ in 0..10 {
                    let area = (min_scale + (max_scale - min_scale) * rng.random::<f64>()) * wf * hf;
                    let (l0, l1) = (ratio.0.ln(), ratio.1.ln());
                    let r = (l0 + (l1 - l0) * rng.random::<f64>()).exp();
                    let nw = (area * r).sqrt().round() as u32;
                    let nh = (area / r).sqrt().round() as u32;
                    if nw >= 1 && nh >= 1 && nw <= w && nh <= h {
                        let left = rng.random_range(0..=w - nw);
                        let top = rng.random_range(0..=h - nh);
                        return resize(img, (left, top, nw, nh), out_w, out_h);
                    }
                }
                let (cw, ch) = if wf / hf < ratio.0 {
                    (w, ((wf / ratio.0) as u32).max(1))
                } else if wf / hf > ratio.1 {
                    (((hf * ratio.1) as u32).max(1), h)
                } else {
                    (w, h)
                };
                resize(img, ((w - cw) / 2, (h - ch) / 2, cw, ch), out_w, out_h)
            }
        }
    }
}

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resizes the region (left, top, width, height) of `img` to `out_w` x `out_h` with
/// antialiased bilinear convolution (PIL `BILINEAR`). The region is cut out first (a view,
/// no copy), so pixels outside it never enter the filter — as fastai's crop-then-resize.
fn resize(img: &RgbImage, region: (u32, u32, u32, u32), out_w: u32, out_h: u32) -> crate::Result<RgbImage> {
    let (l, t, cw, ch) = region;
    if (l, t, cw, ch) == (0, 0, out_w, out_h) && img.dimensions() == (out_w, out_h) {
        return Ok(img.clone());
    }
    let mut dst = FrImage::new(out_w, out_h, PixelType::U8x3);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    let src = CroppedImage::new(img, l, t, cw, ch).with_context(|| format!("crop box {cw}x{ch} at ({l}, {t})"))?;
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &opts))
        .with_context(|| format!("resizing a {}x{} image to {out_w}x{out_h}", img.width(), img.height()))?;
    RgbImage::from_raw(out_w, out_h, dst.into_vec()).context("resize produced a buffer of the wrong size")
}

/// Source index for a position `i` (possibly outside 0..n) under a padding mode; `None`
/// means a zero pixel.
fn pad_index(i: i64, n: i64, mode: PadMode) -> Option<i64> {
    if (0..n).contains(&i) {
        return Some(i);
    }
    match mode {
        PadMode::Zeros => None,
        PadMode::Border => Some(i.clamp(0, n - 1)),
        PadMode::Reflection if n == 1 => Some(0),
        PadMode::Reflection => {
            let period = 2 * (n - 1);
            let k = i.rem_euclid(period);
            Some(if k < n { k } else { period - k })
        }
    }
}

/// The `cw` x `ch` region of `img` whose top-left corner is (`left`, `top`) — which may
/// lie partly outside the image — with the outside filled by `mode` (fastai `crop_pad`).
fn crop_pad(img: &RgbImage, left: i64, top: i64, cw: u32, ch: u32, mode: PadMode) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let src = img.as_raw();
    let xs: Vec<Option<usize>> = (0..cw as i64).map(|x| pad_index(left + x, w, mode).map(|v| v as usize)).collect();
    let mut out = vec![0u8; cw as usize * ch as usize * 3];
    for (y, row) in out.chunks_exact_mut(cw as usize * 3).enumerate() {
        let Some(sy) = pad_index(top + y as i64, h, mode) else { continue };
        let srow = &src[sy as usize * w as usize * 3..][..w as usize * 3];
        for (px, sx) in row.chunks_exact_mut(3).zip(&xs) {
            if let Some(sx) = sx {
                px.copy_from_slice(&srow[sx * 3..sx * 3 + 3]);
            }
        }
    }
    RgbImage::from_raw(cw, ch, out).expect("buffer sized for cw x ch RGB")
}
