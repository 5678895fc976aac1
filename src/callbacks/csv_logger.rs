//! fastai `CSVLogger`.

use super::Callback;
use crate::learner::Learner;
use std::path::PathBuf;
use std::time::Instant;

/// Writes the results table (`epoch,train_loss,valid_loss,<metrics>,time`) to a CSV
/// file, rewritten atomically after every epoch (fastai `CSVLogger(fname='history.csv',
/// append=False)`). With `append`, rows of earlier fits in the same file are kept.
pub struct CSVLogger {
    /// Output file.
    pub path: PathBuf,
    /// Keep the file's earlier content.
    pub append: bool,
    text: String,
    start: Option<Instant>,
}

impl CSVLogger {
    /// Logs to `path`.
    pub fn new(path: impl Into<PathBuf>, append: bool) -> Self {
        CSVLogger { path: path.into(), append, text: String::new(), start: None }
    }
}

impl Callback for CSVLogger {
    fn name(&self) -> String { "CSVLogger".into() }
    fn order(&self) -> i32 { 60 }
    fn before_fit(&mut self, l: &mut Learner) -> crate::Result<()> {
        self.text = if self.append { std::fs::read_to_string(&self.path).unwrap_or_default() } else { String::new() };
        let mut head = vec!["epoch".to_string()];
        head.extend(l.metric_names());
        head.push("time".into());
        self.text.push_str(&head.join(","));
        self.text.push('\n');
        Ok(())
    }
    fn before_epoch(&mut self, _: &mut Learner) -> crate::Result<()> { self.start = Some(Instant::now()); Ok(()) }
    fn after_epoch(&mut self, l: &mut Learner) -> crate::Result<()> {
        let mut cells = vec![l.epoch.to_string()];
        if let Some(v) = l.recorder.values.last() { cells.extend(v.iter().map(|x| format!("{x}"))); }
        cells.push(super::progress::format_time(self.start.map_or(0.0, |s| s.elapsed().as_secs_f64())));
        self.text.push_str(&cells.join(","));
        self.text.push('\n');
        crate::util::atomic::write_atomic(&self.path, self.text.as_bytes())
    }
    /// Writes the file once more, so that a fit of 0 epochs leaves its header as fastai's
    /// does (a `fine_tune` with `freeze_epochs=0` keeps its two tables apart).
    fn after_fit(&mut self, _: &mut Learner) -> crate::Result<()> {
        crate::util::atomic::write_atomic(&self.path, self.text.as_bytes())
    }
}
