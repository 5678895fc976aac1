//! Item-level preprocessing of photos for inference: decode and presize.

use crate::util::rng::Rng;
use anyhow::{Context, bail};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage, imageops::FilterType};
use rand::Rng as _;
use std::path::Path;
use tch::Tensor;

/// Decodes any photo the `image` crate reads (JPEG incl. CMYK, PNG, GIF, BMP, WebP,
/// TIFF; format from the content, not the extension) into 8-bit RGB, EXIF orientation
/// applied, alpha dropped.
///
/// Errors: unreadable, truncated or non-image file, naming it.
pub fn decode_rgb(path: &Path) -> crate::Result<RgbImage> {
    let read = || -> crate::Result<RgbImage> {
        let reader = ImageReader::open(path)?.with_guessed_format()?;
        let mut decoder = reader.into_decoder()?;
        let orientation = decoder.orientation()?;
        let mut img = DynamicImage::from_decoder(decoder)?;
        img.apply_orientation(orientation);
        Ok(img.to_rgb8())
    };
    read().with_context(|| format!("cannot decode image {}", path.display()))
}

/// fastai `Resize(size, method)` as an item transform: `crop` takes the largest square
/// (centred when `rng` is `None`, as on the validation set; at a random position with
/// `rng`, as on the training set) and resizes it; `squish` resizes the whole photo;
/// `pad` fits it inside the square with zero (black) borders. Antialiased bilinear
/// resampling (PIL `BILINEAR`, as fastai).
///
/// Errors: an unknown `method`.
pub fn presize(img: &RgbImage, size: u32, method: &str, rng: Option<&mut Rng>) -> crate::Result<RgbImage> {
    let (w, h) = img.dimensions();
    let filter = FilterType::Triangle;
    Ok(match method {
        "crop" => {
            let side = w.min(h);
            let (px, py) = match rng {
                Some(r) => (r.random::<f64>(), r.random::<f64>()),
                None => (0.5, 0.5),
            };
            let x0 = ((w - side) as f64 * px) as u32;
            let y0 = ((h - side) as f64 * py) as u32;
            let sq = image::imageops::crop_imm(img, x0, y0, side, side).to_image();
            image::imageops::resize(&sq, size, size, filter)
        }
        "squish" => image::imageops::resize(img, size, size, filter),
        "pad" => {
            let scale = size as f64 / w.max(h) as f64;
            let (nw, nh) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
            let small = image::imageops::resize(img, nw, nh, filter);
            let mut out = RgbImage::new(size, size);
            image::imageops::replace(&mut out, &small, ((size - nw) / 2) as i64, ((size - nh) / 2) as i64);
            out
        }
        other => bail!("unknown resize method '{other}' (crop, pad or squish)"),
    })
}

/// Stacks same-sized RGB images into a `u8` tensor (N, 3, H, W) on the CPU.
///
/// Errors: no images, or images of different sizes.
pub fn to_batch(imgs: &[RgbImage]) -> crate::Result<Tensor> {
    let Some(first) = imgs.first() else { bail!("no images to batch") };
    let (w, h) = first.dimensions();
    let mut data = Vec::with_capacity(imgs.len() * (w * h * 3) as usize);
    for img in imgs {
        if img.dimensions() != (w, h) {
            bail!("images of different sizes in one batch: {:?} and {:?}", (w, h), img.dimensions());
        }
        data.extend_from_slice(img.as_raw());
    }
    Ok(Tensor::from_slice(&data).view([imgs.len() as i64, h as i64, w as i64, 3]).permute([0, 3, 1, 2]).contiguous())
}

