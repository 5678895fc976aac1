//! PNG plots of an interpretation: the confusion-matrix heat-map and the top-losses grid.
//! Drawn with plotters on an `image` buffer, text in DejaVu Sans.

use super::interpretation::ClassificationInterpretation;
use crate::data::ItemTfm;
use crate::data::decode::decode_rgb;
use anyhow::bail;
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform};
use std::path::Path;
use std::sync::Once;

/// Registers DejaVu Sans (from the `dejavu` crate) as plotters' `sans-serif` font.
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped inside the `dejavu` crate.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// matplotlib's `Blues` colour map at `t` in 0..=1.
fn blues(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (247, 251, 255),
        (222, 235, 247),
        (198, 219, 239),
        (158, 202, 225),
        (107, 174, 214),
        (66, 146, 198),
        (33, 113, 181),
        (8, 81, 156),
        (8, 48, 107),
    ];
    let x = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let (i, f) = ((x.floor() as usize).min(STOPS.len() - 2), x - x.floor().min((STOPS.len() - 2) as f64));
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn text_width(text: &str, size: f64) -> u32 {
    ("sans-serif", size).into_font().box_size(text).map(|(w, _)| w).unwrap_or(text.len() as u32 * size as u32 / 2)
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing failed: {e:?}")
}

/// Plots the confusion matrix as a heat-map PNG (fastai `plot_confusion_matrix`): rows
/// actual, columns predicted, class names on both axes (x labels vertical), the count in
/// every cell (white on dark cells), `Blues` colours. With `normalize`, each row is
/// divided by its total and shown with 2 decimals. The canvas grows with the number of
/// classes so that 37 classes stay legible (≈ 1500 px square).
///
/// Errors: the file cannot be written.
pub fn plot_confusion_matrix(interp: &ClassificationInterpretation, path: &Path, normalize: bool) -> crate::Result<()> {
    register_font();
    let cm = interp.confusion_matrix();
    let c = cm.len();
    let vals: Vec<Vec<f64>> = cm
        .iter()
        .map(|row| {
            let s: u64 = row.iter().sum();
            row.iter().map(|&v| if normalize { if s > 0 { v as f64 / s as f64 } else { 0.0 } } else { v as f64 }).collect()
        })
        .collect();
    let max = vals.iter().flatten().cloned().fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let cell: u32 = (1000 / c.max(1) as u32).clamp(30, 80);
    let label_size = 16.0;
    let count_size = if normalize { 11.0f64 } else { 14.0 }.min(cell as f64 * 0.5);
    let label_w = interp.vocab().iter().map(|v| text_width(v, label_size)).max().unwrap_or(0);
    let (left, top) = (label_w + 60, 60);
    let grid = cell * c as u32;
    let (w, h) = (left + grid + 30, top + grid + label_w + 60);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    {
        let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
        let center = Pos::new(HPos::Center, VPos::Center);
        let title = ("sans-serif", 22.0).into_font().color(&BLACK).pos(center);
        let title_text = if normalize { "Confusion matrix (normalised by row)" } else { "Confusion matrix" };
        root.draw_text(title_text, &title, ((left + grid / 2) as i32, 28)).map_err(draw_err)?;
        for (i, row) in vals.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let (x0, y0) = ((left + j as u32 * cell) as i32, (top + i as u32 * cell) as i32);
                let fill = blues(v / max);
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell as i32, y0 + cell as i32)], fill.filled()))
                    .map_err(draw_err)?;
                let text = if normalize { format!("{v:.2}") } else { format!("{}", cm[i][j]) };
                let color = if v > max / 2.0 {
                    WHITE
                } else if cm[i][j] == 0 {
                    RGBColor(170, 170, 170)
                } else {
                    BLACK
                };
                let style = ("sans-serif", count_size).into_font().color(&color).pos(center);
                root.draw_text(&text, &style, (x0 + cell as i32 / 2, y0 + cell as i32 / 2)).map_err(draw_err)?;
            }
        }
        let grey = RGBColor(200, 200, 200);
        for k in 0..=c as i32 {
            let o = k * cell as i32;
            let (l, t, g) = (left as i32, top as i32, grid as i32);
            root.draw(&PathElement::new(vec![(l + o, t), (l + o, t + g)], grey)).map_err(draw_err)?;
            root.draw(&PathElement::new(vec![(l, t + o), (l + g, t + o)], grey)).map_err(draw_err)?;
        }
        let y_label = ("sans-serif", label_size).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
        let x_label = ("sans-serif", label_size).into_font().transform(FontTransform::Rotate270).color(&BLACK);
        for (k, name) in interp.vocab().iter().enumerate() {
            let mid = (k as u32 * cell + cell / 2) as i32;
            root.draw_text(name, &y_label, (left as i32 - 6, top as i32 + mid)).map_err(draw_err)?;
            // Rotated 270°: the text runs upwards from its anchor; end it just below the grid.
            let tw = text_width(name, label_size) as i32;
            root.draw_text(name, &x_label, (left as i32 + mid - label_size as i32 / 2, (top + grid) as i32 + 6 + tw))
                .map_err(draw_err)?;
        }
        let axis = ("sans-serif", 20.0).into_font().color(&BLACK).pos(center);
        root.draw_text("Predicted", &axis, ((left + grid / 2) as i32, (h - 24) as i32)).map_err(draw_err)?;
        let axis_v = ("sans-serif", 20.0).into_font().transform(FontTransform::Rotate270).color(&BLACK);
        root.draw_text("Actual", &axis_v, (14, (top + grid / 2) as i32 + text_width("Actual", 20.0) as i32 / 2))
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    crate::util::image_file::write_image(path, &img)
}

/// Plots the `k` largest losses as a grid of photos (fastai `plot_top_losses`), each
/// captioned `predicted / actual / loss / probability` (probability of the predicted
/// class, 2 decimals); photos are centre-cropped squares of 256 px. A photo that cannot
/// be read is drawn as a grey square with the reason.
///
/// Errors: the interpretation has no item paths; the file cannot be written.
pub fn plot_top_losses(interp: &ClassificationInterpretation, k: usize, path: &Path) -> crate::Result<()> {
    register_font();
    if interp.items().is_empty() {
        bail!("plot_top_losses needs the items' photo paths; this interpretation has none");
    }
    let top = interp.top_losses(k, true);
    let n = top.len().max(1);
    let ncols = (n as f64).sqrt().ceil() as u32;
    let nrows = (n as u32).div_ceil(ncols);
    let (thumb, cap_size, pad) = (256u32, 15.0, 14u32);
    let cap_h = (cap_size as u32 + 5) * 4;
    let names = interp.item_names();
    let (cw, ch) = (thumb + 2 * pad, thumb + cap_h + pad);
    let title_h = 50;
    let (w, h) = (cw * ncols, title_h + ch * nrows);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let mut errors = Vec::new();
    for (slot, t) in top.iter().enumerate() {
        let (col, row) = (slot as u32 % ncols, slot as u32 / ncols);
        let (x0, y0) = (col * cw + pad, title_h + row * ch + cap_h);
        let p = &interp.items()[t.index];
        match decode_rgb(p).and_then(|im| ItemTfm::resize(thumb).apply(&im, false, &mut crate::util::rng::seeded(0))) {
            Ok(photo) => image::imageops::replace(&mut img, &photo, x0 as i64, y0 as i64),
            Err(e) => {
                let grey = RgbImage::from_pixel(thumb, thumb, Rgb([200, 200, 200]));
                image::imageops::replace(&mut img, &grey, x0 as i64, y0 as i64);
                errors.push((slot, format!("{e:#}")));
            }
        }
    }
    {
        let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
        let center = Pos::new(HPos::Center, VPos::Top);
        let title = ("sans-serif", 22.0).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));
        root.draw_text("Prediction / Actual / Loss / Probability / File", &title, ((w / 2) as i32, 25)).map_err(draw_err)?;
        let cap = ("sans-serif", cap_size).into_font().color(&BLACK).pos(center);
        for (slot, t) in top.iter().enumerate() {
            let (col, row) = (slot as u32 % ncols, slot as u32 / ncols);
            let cx = (col * cw + cw / 2) as i32;
            let (pred, act) = (&interp.vocab()[t.predicted], &interp.vocab()[t.actual]);
            let one = format!("{pred} / {act}");
            let mut lines = if text_width(&one, cap_size) <= thumb + pad { vec![one] } else { vec![format!("{pred} /"), act.clone()] };
            lines.push(format!("{:.2} / {:.2}", t.loss, t.prob));
            // Which file: names repeated across classes keep their folders.
            lines.push(names[t.index].chars().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect());
            // Bottom-aligned just above the photo.
            let mut y = (title_h + row * ch + cap_h) as i32 - lines.len() as i32 * (cap_size as i32 + 5) - 2;
            for line in &lines {
                root.draw_text(line, &cap, (cx, y)).map_err(draw_err)?;
                y += cap_size as i32 + 5;
            }
        }
        let small = ("sans-serif", 11.0).into_font().color(&BLACK);
        for (slot, e) in &errors {
            let (col, row) = (*slot as u32 % ncols, *slot as u32 / ncols);
            let (x0, y0) = ((col * cw + pad + 4) as i32, (title_h + row * ch + cap_h + thumb / 2) as i32);
            root.draw_text(&e.chars().take(40).collect::<String>(), &small, (x0, y0)).map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    crate::util::image_file::write_image(path, &img)
}
