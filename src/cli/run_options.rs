//! The options of a `fine-tune` run that a checkpoint's position depends on, recorded in
//! `--out` when the run starts (`run_options.json`) so that `--resume` can refuse a
//! command that differs: a checkpoint says "phase 1, epoch 0, batch 27", which means
//! something else at another batch size, learning-rate schedule or architecture.

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// File name of the record in `--out`.
pub const RUN_OPTIONS_JSON: &str = "run_options.json";

/// What `--resume` must find unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// `--arch`.
    pub arch: String,
    /// `--bs` (images per batch, per process).
    pub bs: usize,
    /// The learning rate used (after `--lr auto`'s sweep).
    pub lr: f64,
    /// `--seed`.
    pub seed: u64,
    /// `--freeze-epochs`.
    pub freeze_epochs: usize,
    /// `--epochs`; `None` for a `--time` run (its resume command gives the fitted epochs).
    pub epochs: Option<usize>,
    /// `--presize` (px).
    pub presize: u32,
    /// `--size` (px).
    pub size: i64,
}

impl RunOptions {
    /// Writes the record into `out` atomically.
    ///
    /// Errors: the file cannot be written (named).
    pub fn save(&self, out: &Path) -> crate::Result<()> {
        let p = out.join(RUN_OPTIONS_JSON);
        crate::util::atomic::write_atomic(&p, serde_json::to_string_pretty(self)?.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))
    }

    /// Refuses to resume when `self` (this command) differs from the record in `out`,
    /// naming each option with both values. A folder without a record (a checkpoint from an
    /// older kestrel) is not checked.
    ///
    /// Errors: the options differ; the record is unreadable (named).
    pub fn check_resume(&self, out: &Path) -> crate::Result<()> {
        let p = out.join(RUN_OPTIONS_JSON);
        let Ok(text) = std::fs::read_to_string(&p) else { return Ok(()) };
        let was: RunOptions = serde_json::from_str(&text).with_context(|| format!("{}: unreadable", p.display()))?;
        let mut diffs = Vec::new();
        let mut cmp = |name: &str, old: String, new: String| {
            if old != new { diffs.push(format!("{name} {old} (this command: {new})")); }
        };
        cmp("--arch", was.arch.clone(), self.arch.clone());
        cmp("--bs", was.bs.to_string(), self.bs.to_string());
        cmp("--lr", format!("{:e}", was.lr), format!("{:e}", self.lr));
        cmp("--seed", was.seed.to_string(), self.seed.to_string());
        cmp("--freeze-epochs", was.freeze_epochs.to_string(), self.freeze_epochs.to_string());
        if let (Some(a), Some(b)) = (was.epochs, self.epochs) { cmp("--epochs", a.to_string(), b.to_string()); }
        cmp("--presize", was.presize.to_string(), self.presize.to_string());
        cmp("--size", was.size.to_string(), self.size.to_string());
        if !diffs.is_empty() {
            bail!("--resume: the interrupted run in {} used {}; the checkpoint continues that run, so give the same \
                   options (the command printed at the interrupt has them), or start afresh without --resume",
                  out.display(), diffs.join(", "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> RunOptions {
        RunOptions { arch: "resnet18".into(), bs: 8, lr: 2e-3, seed: 7, freeze_epochs: 1, epochs: Some(3), presize: 96, size: 64 }
    }

    #[test]
    fn resume_with_changed_options_names_each_one() {
        let d = tempfile::tempdir().unwrap();
        opts().check_resume(d.path()).unwrap(); // no record: not checked
        opts().save(d.path()).unwrap();
        opts().check_resume(d.path()).unwrap();
        let e = RunOptions { bs: 16, lr: 1e-2, arch: "resnet34".into(), ..opts() }.check_resume(d.path()).unwrap_err().to_string();
        assert!(e.contains("--arch resnet18 (this command: resnet34)") && e.contains("--bs 8 (this command: 16)")
                && e.contains("--lr 2e-3 (this command: 1e-2)") && !e.contains("--seed"), "{e}");
        // A --time run records no epochs: the resume command's --epochs is the fitted count.
        RunOptions { epochs: None, ..opts() }.save(d.path()).unwrap();
        RunOptions { epochs: Some(19), ..opts() }.check_resume(d.path()).unwrap();
    }
}
