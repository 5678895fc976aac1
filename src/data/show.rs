//! `show_batch` (fastai `DataLoaders.show_batch`): a PNG grid of a batch's images with
//! each label under its image.

use anyhow::{Context, bail};
use image::RgbImage;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use std::path::Path;
use std::sync::Once;
use tch::{Kind, Tensor};

/// Longest side of each image cell in the grid, pixels.
pub const CELL: u32 = 256;
const LABEL_H: u32 = 26;
const GAP: u32 = 6;

/// How to turn a batch back into displayable 0..=255 pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Denorm {
    /// The batch is `u8` 0..=255 (no batch transforms) — or `f32` already in 0..1.
    None,
    /// The batch was normalised with per-channel `mean` and `std` in 0..1 units (fastai
    /// `Normalize.from_stats(*imagenet_stats)`); undone as `x * std + mean` (fastai
    /// `Normalize.decode`).
    Stats {
        /// Per-channel means (R, G, B).
        mean: [f64; 3],
        /// Per-channel standard deviations (R, G, B).
        std: [f64; 3],
    },
}

/// The batch `x` (N, 3, H, W), any device, as `u8` (N, 3, H, W) on the CPU: `u8` as is;
/// floats scaled from 0..1 (after undoing `denorm`) and clamped.
pub fn to_display_u8(x: &Tensor, denorm: Denorm) -> crate::Result<Tensor> {
    let x = x.f_to_device(tch::Device::Cpu)?;
    if x.kind() == Kind::Uint8 {
        return Ok(x);
    }
    let mut x = x.f_to_kind(Kind::Float)?;
    if let Denorm::Stats { mean, std } = denorm {
        let m = Tensor::from_slice(&mean.map(|v| v as f32)).view([1, 3, 1, 1]);
        let s = Tensor::from_slice(&std.map(|v| v as f32)).view([1, 3, 1, 1]);
        x = x * s + m;
    }
    Ok((x * 255.0).clamp(0.0, 255.0).round().to_kind(Kind::Uint8))
}

/// Draws the first `nrows * ncols` images of `x` (N, 3, H, W) — `u8`, or floats
/// undone with `denorm` — in a grid with `labels[i]` under image `i`, each image scaled
/// to fit [`CELL`] pixels, and writes it as a PNG to `out` (atomically).
///
/// Errors: `x` not of shape (N, 3, H, W), fewer labels than images shown, nrows or
/// ncols 0, the file cannot be written.
pub fn show_batch(x: &Tensor, labels: &[String], nrows: usize, ncols: usize, denorm: Denorm, out: &Path) -> crate::Result<()> {
    let size = x.size();
    if size.len() != 4 || size[1] != 3 {
        bail!("show_batch needs a batch of shape (N, 3, H, W), got {size:?}");
    }
    if nrows == 0 || ncols == 0 {
        bail!("show_batch needs nrows and ncols ≥ 1");
    }
    let n = (nrows * ncols).min(size[0] as usize);
    if labels.len() < n {
        bail!("show_batch: {n} images but {} labels", labels.len());
    }
    let (h, w) = (size[2] as u32, size[3] as u32);
    let scale = (CELL as f64 / h.max(w) as f64).min(1.0);
    let (cw, ch) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    let rows = n.div_ceil(ncols) as u32;
    let cols = ncols.min(n) as u32;
    let (gw, gh) = (cols * (cw + GAP) + GAP, rows * (ch + LABEL_H + GAP) + GAP);
    let mut grid = RgbImage::from_pixel(gw, gh, image::Rgb([255, 255, 255]));
    let x = to_display_u8(x, denorm)?;
    for i in 0..n {
        let chw = Vec::<u8>::try_from(x.get(i as i64).contiguous().view([-1]))?;
        let px = (h * w) as usize;
        let hwc: Vec<u8> = (0..px).flat_map(|p| [chw[p], chw[px + p], chw[2 * px + p]]).collect();
        let img = RgbImage::from_raw(w, h, hwc).context("image buffer of the wrong size")?;
        let img = if (cw, ch) == (w, h) { img } else { image::imageops::resize(&img, cw, ch, image::imageops::FilterType::Triangle) };
        let (r, c) = ((i / ncols) as u32, (i % ncols) as u32);
        image::imageops::replace(&mut grid, &img, (GAP + c * (cw + GAP)) as i64, (GAP + r * (ch + LABEL_H + GAP)) as i64);
    }
    draw_labels(&mut grid, labels, n, ncols, (cw, ch))?;
    crate::util::image_file::write_image(out, &grid)
}

static FONT: Once = Once::new();

/// Registers DejaVu Sans as plotters' `sans-serif` (once per process).
pub fn register_dejavu() {
    FONT.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

fn draw_labels(grid: &mut RgbImage, labels: &[String], n: usize, ncols: usize, (cw, ch): (u32, u32)) -> crate::Result<()> {
    register_dejavu();
    let (gw, gh) = grid.dimensions();
    let root = BitMapBackend::with_buffer(grid.as_mut(), (gw, gh)).into_drawing_area();
    let font = ("sans-serif", 15).into_font().color(&BLACK);
    for (i, label) in labels.iter().take(n).enumerate() {
        let (r, c) = ((i / ncols) as u32, (i % ncols) as u32);
        let max_chars = (cw / 8).max(4) as usize;
        let text: String = if label.chars().count() > max_chars {
            label.chars().take(max_chars - 1).chain(['…']).collect()
        } else {
            label.clone()
        };
        let x = (GAP + c * (cw + GAP) + cw / 2) as i32;
        let y = (GAP + r * (ch + LABEL_H + GAP) + ch + 4) as i32;
        let style = font.clone().pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
        root.draw(&Text::new(text, (x, y), style)).map_err(|e| anyhow::anyhow!("drawing the label '{label}': {e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("drawing the labels: {e}"))?;
    Ok(())
}

/// fastai `dl.show_batch(nrows, ncols, unique)`: draws the first batch of `dl` (or, with
/// `unique`, its first item repeated through the transforms) with the class names of
/// `vocab`, undoing normalisation with `denorm`, into the PNG `out`.
///
/// Errors: the loader's errors, or [`show_batch`]'s.
pub fn show_loader_batch(
    dl: &super::ImageDataLoader,
    vocab: &super::CategoryMap,
    nrows: usize,
    ncols: usize,
    unique: bool,
    denorm: Denorm,
    out: &Path,
) -> crate::Result<()> {
    let b = if unique { dl.unique_batch(dl.order(0).first().copied().unwrap_or(0))? } else { dl.one_batch()? };
    let y = b.y.to_device(tch::Device::Cpu);
    let labels: Vec<String> = if y.dim() == 2 {
        // Multi-label: every label of the photo, `;`-separated (as fastai's show_batch).
        let hot = Vec::<Vec<f32>>::try_from(y)?;
        hot.iter().map(|row| {
            let l: Vec<&str> = row.iter().enumerate().filter(|(_, v)| **v > 0.5).map(|(i, _)| vocab.label(i).unwrap_or("?")).collect();
            if l.is_empty() { "(none)".to_owned() } else { l.join(";") }
        }).collect()
    } else {
        let ys = Vec::<i64>::try_from(y)?;
        ys.iter().map(|&t| vocab.label(t as usize).unwrap_or("?").to_owned()).collect()
    };
    show_batch(&b.x, &labels, nrows, ncols, denorm, out)
}
