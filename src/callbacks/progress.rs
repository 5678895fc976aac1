//! fastai `ProgressCallback`: progress bars and the results table.

use super::Callback;
use crate::learner::Learner;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

/// An epoch bar and a batch bar on stderr (hidden when stderr is not a terminal), then
/// one row per epoch of fastai's table on stdout:
/// ```text
/// epoch  train_loss  valid_loss  error_rate  time
/// 0      1.234567    0.876543    0.250000    00:12
/// ```
#[derive(Default)]
pub struct ProgressCallback {
    epoch_bar: Option<ProgressBar>,
    batch_bar: Option<ProgressBar>,
    start: Option<Instant>,
}

impl ProgressCallback {
    /// A progress reporter.
    pub fn new() -> Self { Self::default() }
}

/// fastai's `format_time`: `mm:ss` (or `h:mm:ss`).
pub fn format_time(secs: f64) -> String {
    let t = secs.round() as u64;
    let (h, m, s) = (t / 3600, (t / 60) % 60, t % 60);
    if h > 0 { format!("{h}:{m:02}:{s:02}") } else { format!("{m:02}:{s:02}") }
}

fn row(cells: &[String]) -> String {
    // 12 columns per cell as fastai's table; a longer name (accuracy_multi) keeps one space.
    cells.iter().map(|c| format!("{c:<11} ")).collect::<Vec<_>>().join("").trim_end().to_string()
}

impl Callback for ProgressCallback {
    fn name(&self) -> String { "Progress".into() }
    fn order(&self) -> i32 { 70 }
    fn before_fit(&mut self, l: &mut Learner) -> crate::Result<()> {
        let mut head = vec!["epoch".to_string()];
        head.extend(l.metric_names());
        head.push("time".into());
        println!("{}", row(&head));
        let bar = ProgressBar::new(l.n_epoch as u64);
        bar.set_style(ProgressStyle::with_template("epoch {pos}/{len} {wide_bar} [{elapsed}<{eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()));
        self.epoch_bar = Some(bar);
        Ok(())
    }
    fn before_epoch(&mut self, l: &mut Learner) -> crate::Result<()> {
        self.start = Some(Instant::now());
        if let Some(b) = &self.epoch_bar { b.set_length(l.n_epoch as u64); b.set_position(l.epoch as u64); }
        Ok(())
    }
    fn before_train(&mut self, l: &mut Learner) -> crate::Result<()> { self.new_batch_bar(l, "train"); Ok(()) }
    fn before_validate(&mut self, l: &mut Learner) -> crate::Result<()> { self.new_batch_bar(l, "valid"); Ok(()) }
    fn after_batch(&mut self, l: &mut Learner) -> crate::Result<()> {
        if let Some(b) = &self.batch_bar {
            b.set_position(l.iter as u64 + 1);
            if l.training { b.set_message(format!("{:.4}", l.smooth_loss)); }
        }
        Ok(())
    }
    fn after_epoch(&mut self, l: &mut Learner) -> crate::Result<()> {
        if let Some(b) = self.batch_bar.take() { b.finish_and_clear(); }
        let secs = self.start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let mut cells = vec![l.epoch.to_string()];
        if let Some(v) = l.recorder.values.last() { cells.extend(v.iter().map(|x| format!("{x:.6}"))); }
        cells.push(format_time(secs));
        let line = row(&cells);
        match &self.epoch_bar { Some(b) => b.suspend(|| println!("{line}")), None => println!("{line}") }
        Ok(())
    }
    fn after_fit(&mut self, _: &mut Learner) -> crate::Result<()> {
        if let Some(b) = self.batch_bar.take() { b.finish_and_clear(); }
        if let Some(b) = self.epoch_bar.take() { b.finish_and_clear(); }
        Ok(())
    }
}

impl ProgressCallback {
    fn new_batch_bar(&mut self, l: &Learner, what: &str) {
        if let Some(b) = self.batch_bar.take() { b.finish_and_clear(); }
        let bar = ProgressBar::new(l.n_iter as u64);
        bar.set_style(ProgressStyle::with_template(&format!("{what} {{pos}}/{{len}} {{wide_bar}} {{msg}} [{{elapsed}}<{{eta}}]"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()));
        self.batch_bar = Some(bar);
    }
}
