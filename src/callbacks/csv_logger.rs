//! fastai `CSVLogger`.

use super::Callback;
use crate::learner::Learner;
use std::path::PathBuf;
use std::time::Instant;

/// Writes the results table (`epoch,train_loss,valid_loss,<metrics>,time`) to a CSV
/// file, rewritten atomically after every epoch (fastai `CSVLogger(fname='history.csv',
/// append=False)`). With `append`, rows of earlier fits in the same file are kept, and a
/// fit resumed from a checkpoint continues its own table (see `before_fit`).
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
    /// A resumed fit continues its phase's table: the file keeps the tables of the phases
    /// before and the rows of this phase's epochs already done, with no second header (a
    /// row written after the checkpoint, by a run killed later, is dropped: that epoch runs
    /// again).
    fn before_fit(&mut self, l: &mut Learner) -> crate::Result<()> {
        self.text = if self.append { std::fs::read_to_string(&self.path).unwrap_or_default() } else { String::new() };
        if let Some(at) = l.resumed_at.filter(|_| self.append)
            && let Some(kept) = tables_until(&self.text, at.phase, at.epoch)
        {
            self.text = kept;
            return Ok(());
        }
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

/// The lines of `text` (tables, each starting with its `epoch,…` header, one per phase)
/// up to `rows` rows of table `phase`; `None` when the text has no table `phase`.
fn tables_until(text: &str, phase: usize, rows: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().enumerate().filter(|(_, l)| l.starts_with("epoch,")).nth(phase)?.0;
    let end = lines[header + 1..].iter().take(rows).take_while(|l| !l.starts_with("epoch,")).count();
    Some(lines[..=header + end].iter().map(|l| format!("{l}\n")).collect())
}

#[cfg(test)]
mod tests {
    use super::tables_until;

    const FILE: &str = "epoch,train_loss,time\n0,1.5,00:01\nepoch,train_loss,time\n0,1.2,00:02\n1,1.1,00:02\n";

    #[test]
    fn a_resumed_phase_keeps_the_tables_before_and_its_epochs_done() {
        assert_eq!(tables_until(FILE, 1, 1).unwrap(), "epoch,train_loss,time\n0,1.5,00:01\nepoch,train_loss,time\n0,1.2,00:02\n");
        // Interrupted in the phase's first epoch: its header only.
        assert_eq!(tables_until(FILE, 1, 0).unwrap(), "epoch,train_loss,time\n0,1.5,00:01\nepoch,train_loss,time\n");
        // A later table is dropped with the rows after the resume point.
        assert_eq!(tables_until(FILE, 0, 1).unwrap(), "epoch,train_loss,time\n0,1.5,00:01\n");
        // Killed before the phase's table was written: none to continue.
        assert_eq!(tables_until(FILE, 2, 0), None);
        assert_eq!(tables_until("", 0, 0), None);
    }
}
