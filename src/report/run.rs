//! The report of one `kestrel fine-tune` run, assembled from the files the run wrote.

use super::{Report, Section};
use anyhow::Context;
use std::path::PathBuf;

/// What [`write_run_report`] needs: the output folder (with `metrics.csv` and the PNGs)
/// and what is not in a file.
#[derive(Debug, Clone)]
pub struct RunFiles {
    /// The run's `--out` folder.
    pub out: PathBuf,
    /// Settings of the run, in display order.
    pub settings: Vec<(String, String)>,
    /// Final validation error rate, in [0, 1]; NaN for multi-label runs (their F1 and
    /// accuracy_multi are in `settings`).
    pub error_rate: f64,
    /// Wall time of `fine_tune`, seconds.
    pub fit_secs: f64,
    /// Sections after the images (most_confused, the classification report).
    pub extra: Vec<Section>,
}

/// The images of a run, in report order: (file, heading). Missing files are left out
/// (`lr_find.png` when the sweep was too short).
pub const RUN_IMAGES: [(&str, &str); 5] = [
    ("show_batch.png", "A training batch (show_batch)"),
    ("lr_find.png", "Learning-rate finder (lr_find)"),
    ("loss.png", "Training and validation loss (plot_loss)"),
    ("confusion_matrix.png", "Confusion matrix of the validation set (plot_confusion_matrix)"),
    ("top_losses.png", "Top losses: predicted / actual / loss / probability / file (plot_top_losses)"),
];

/// Writes `out/report.html`: the settings, the final error rate and time, one table per
/// fit from `metrics.csv` (fine_tune's frozen and unfrozen phases, as fastai prints them),
/// and every image of [`RUN_IMAGES`] that exists, inlined.
///
/// Errors: `metrics.csv` or an image cannot be read; the page cannot be written.
pub fn write_run_report(run: &RunFiles) -> crate::Result<()> {
    let mut r = Report::new("kestrel fine-tune");
    r.settings = run.settings.clone();
    if !run.error_rate.is_nan() {
        r.settings.push(("final error_rate".into(), format!("{:.4}", run.error_rate)));
    }
    r.settings.push(("fine_tune time".into(), crate::callbacks::format_time(run.fit_secs)));
    let csv_path = run.out.join("metrics.csv");
    let csv = std::fs::read_to_string(&csv_path).with_context(|| format!("cannot read {}", csv_path.display()))?;
    r.sections.extend(metrics_tables(&csv));
    for (file, title) in RUN_IMAGES {
        let p = run.out.join(file);
        if p.is_file() {
            r.image_file(title, &p)?;
        }
    }
    r.sections.extend(run.extra.iter().cloned());
    r.write(&run.out.join("report.html"))
}

/// One table per fit of a `CSVLogger` file written with `append` (each fit starts with
/// its header line; tables without rows are left out); numbers shown with 6 decimals as fastai's table.
pub fn metrics_tables(csv: &str) -> Vec<Section> {
    let mut tables: Vec<Section> = Vec::new();
    for line in csv.lines().filter(|l| !l.trim().is_empty()) {
        let cells: Vec<String> = line.split(',').map(str::to_string).collect();
        if cells.first().is_some_and(|c| c == "epoch") {
            let title = match tables.len() { 0 => "Training (frozen body)".to_string(), 1 => "Training (unfrozen)".to_string(), n => format!("Training (fit {})", n + 1) };
            tables.push(Section::Table { title, header: cells, rows: vec![] });
        } else if let Some(Section::Table { rows, .. }) = tables.last_mut() {
            rows.push(cells.into_iter().map(|c| if c.contains('.') && !c.contains(':') { c.parse::<f64>().map_or(c, |v| format!("{v:.6}")) } else { c }).collect());
        }
    }
    tables.retain(|t| matches!(t, Section::Table { rows, .. } if !rows.is_empty()));
    tables
}
