//! Line plots as PNG files (plotters with the DejaVu Sans font through ab_glyph).

use anyhow::Context;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// A named curve: (x, y) points.
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
}

static FONT: Once = Once::new();

/// Series with at most this many points also get a dot at each point.
const MAX_MARKED_POINTS: usize = 50;

/// An x-axis tick: `1e-5`-style on a log axis, otherwise an integer or at most 3 decimals.
fn tick_label(x: f64, log_x: bool) -> String {
    if log_x {
        format!("{x:.0e}")
    } else if x.fract() == 0.0 || x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn register_font() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws `series` (and `marks`: (legend label, x, y), drawn as dots) into an 800×500 PNG
/// at `path`, written atomically; `log_x` uses a log10 x axis (all x must be > 0 then).
///
/// Errors: no finite point, or the file cannot be written.
pub fn line_plot(path: &Path, title: &str, xlabel: &str, ylabel: &str, log_x: bool,
                 series: &[Series], marks: &[(String, f64, f64)]) -> crate::Result<()> {
    register_font();
    let pts = series.iter().flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_x || *x > 0.0));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        x0 = x0.min(*x); x1 = x1.max(*x); y0 = y0.min(*y); y1 = y1.max(*y);
    }
    anyhow::ensure!(x0 <= x1, "nothing finite to plot for {}", path.display());
    if x1 == x0 { x1 = x0 + if log_x { x0 } else { 1.0 }; }
    if y1 == y0 { y1 = y0 + 1.0; }
    let pad = (y1 - y0) * 0.05;
    let (w, h) = (800u32, 500u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 22)).margin(15).x_label_area_size(45).y_label_area_size(70);
        let yr = (y0 - pad)..(y1 + pad);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart.configure_mesh().x_desc(xlabel).y_desc(ylabel).label_style(("sans-serif", 14))
                    .x_label_formatter(&|x: &f64| tick_label(*x, log_x))
                    .draw().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
                for (i, s) in series.iter().enumerate() {
                    let c = Palette99::pick(i).to_rgba();
                    let p: Vec<(f64, f64)> = s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_x || *x > 0.0)).collect();
                    if p.len() <= MAX_MARKED_POINTS {
                        // Sparse series (e.g. one validation loss per epoch) get a dot per
                        // point: a single point would otherwise draw nothing.
                        chart.draw_series(p.iter().map(|&(x, y)| Circle::new((x, y), 3, c.filled())))
                            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
                    }
                    chart.draw_series(LineSeries::new(p, c.stroke_width(2))).map_err(|e| anyhow::anyhow!("plot: {e}"))?
                        .label(s.name.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
                }
                for (i, (name, x, y)) in marks.iter().enumerate() {
                    let c = Palette99::pick(i + series.len()).to_rgba();
                    chart.draw_series(std::iter::once(Circle::new((*x, *y), 6, c.filled())))
                        .map_err(|e| anyhow::anyhow!("plot: {e}"))?
                        .label(name.clone())
                        .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
                }
                chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK)
                    .label_font(("sans-serif", 14)).draw().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
            }};
        }
        if log_x {
            draw!(b.build_cartesian_2d((x0..x1).log_scale(), yr).map_err(|e| anyhow::anyhow!("plot: {e}"))?);
        } else {
            draw!(b.build_cartesian_2d(x0..x1, yr).map_err(|e| anyhow::anyhow!("plot: {e}"))?);
        }
        root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).context("plot buffer has the wrong size")?;
    crate::util::image_file::write_image(path, &img)
}
