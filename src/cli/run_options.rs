//! The options of a `fine-tune` run that a checkpoint's position depends on, recorded in
//! `--out` when the run starts (`run_options.json`) so that `--resume` can refuse a
//! command that differs: a checkpoint says "phase 1, epoch 0, batch 27", which means
//! something else at another batch size, learning-rate schedule or architecture.

use std::collections::BTreeMap;
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
    /// The classes of the data, vocabulary order (a changed folder or CSV changes the
    /// model's head: the checkpoint does not fit it).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Every other option of the `fine-tune` command line, by long name, as clap read it
    /// (defaults included), except those a resume may change ([`MAY_CHANGE`]): the data
    /// source and split, the augmentation, the recipe, the precision. Empty in records of
    /// older kestrels, and when the command is not `fine-tune` (nothing is compared then).
    #[serde(default)]
    pub others: BTreeMap<String, String>,
}

/// Options a resumed run may give differently: where and how it runs (`--out`, `--workers`,
/// `--device`, `--checkpoint-every`, the data-parallel launcher's), `--skip-bad` (which a
/// failed run's message suggests), `--resume` itself, and the options recorded apart
/// (`--lr`, `--epochs`/`--time`, whose resume command gives the values used) or that only
/// concern the sweep before training (`--lr-find`, `--lr-find-iters`).
pub const MAY_CHANGE: [&str; 17] = [
    "out", "workers", "device", "checkpoint-every", "skip-bad", "resume", "lr", "epochs", "time", "lr-find",
    "lr-find-iters", "nproc-per-node", "nnodes", "node-rank", "master-addr", "master-port", "dist-timeout",
];

/// The options of this process's `fine-tune` command line (see [`RunOptions::others`]):
/// clap's values of every option of the subcommand, defaults included, by long name;
/// empty when the process was started with another subcommand (`kestrel pets`).
pub fn command_options() -> BTreeMap<String, String> {
    use clap::CommandFactory;
    let mut out = BTreeMap::new();
    let cmd = crate::cli::Cli::command();
    let Ok(m) = cmd.clone().try_get_matches_from(std::env::args_os()) else { return out };
    let (Some(sub), Some(sm)) = (cmd.find_subcommand("fine-tune"), m.subcommand_matches("fine-tune")) else { return out };
    for arg in sub.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if MAY_CHANGE.contains(&long) { continue }
        if let Ok(Some(vals)) = sm.try_get_raw(arg.get_id().as_str()) {
            out.insert(long.to_string(), vals.map(|v| v.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "));
        }
    }
    out
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
        if !was.others.is_empty() && !self.others.is_empty() {
            // The options compared above are in the map too: named once.
            let named = ["arch", "bs", "seed", "freeze-epochs", "presize", "size"];
            let keys: std::collections::BTreeSet<&String> =
                was.others.keys().chain(self.others.keys()).filter(|k| !named.contains(&k.as_str())).collect();
            for k in keys {
                let value = |m: &BTreeMap<String, String>| m.get(k).cloned().unwrap_or_else(|| "(not given)".into());
                cmp(&format!("--{k}"), value(&was.others), value(&self.others));
            }
        }
        if !was.classes.is_empty() && was.classes != self.classes {
            let added: Vec<&String> = self.classes.iter().filter(|c| !was.classes.contains(c)).collect();
            let gone: Vec<&String> = was.classes.iter().filter(|c| !self.classes.contains(c)).collect();
            let list = |v: &[&String]| v.iter().take(5).map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
            diffs.push(format!("{} classes (the data now has {}{}{})", was.classes.len(), self.classes.len(),
                               if added.is_empty() { String::new() } else { format!("; new: {}", list(&added)) },
                               if gone.is_empty() { String::new() } else { format!("; gone: {}", list(&gone)) }));
        }
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
        RunOptions {
            arch: "resnet18".into(), bs: 8, lr: 2e-3, seed: 7, freeze_epochs: 1, epochs: Some(3), presize: 96, size: 64,
            classes: vec!["cat".into(), "dog".into()],
            others: [("valid-col", "is_valid"), ("precision", "auto"), ("bs", "8")].map(|(k, v)| (k.to_string(), v.to_string())).into(),
        }
    }

    #[test]
    fn resume_with_changed_options_names_each_one() {
        let d = tempfile::tempdir().unwrap();
        opts().check_resume(d.path()).unwrap(); // no record: not checked
        opts().save(d.path()).unwrap();
        opts().check_resume(d.path()).unwrap();
        let mut others = opts().others;
        others.insert("bs".into(), "16".into());
        let e = RunOptions { bs: 16, lr: 1e-2, arch: "resnet34".into(), others, ..opts() }.check_resume(d.path()).unwrap_err().to_string();
        assert_eq!(e.matches("--bs").count(), 1, "named once: {e}");
        assert!(e.contains("--arch resnet18 (this command: resnet34)") && e.contains("--bs 8 (this command: 16)")
                && e.contains("--lr 2e-3 (this command: 1e-2)") && !e.contains("--seed"), "{e}");
        // A --time run records no epochs: the resume command's --epochs is the fitted count.
        RunOptions { epochs: None, ..opts() }.save(d.path()).unwrap();
        RunOptions { epochs: Some(19), ..opts() }.check_resume(d.path()).unwrap();
        // The data's split, options and classes.
        let mut others = opts().others;
        others.remove("valid-col");
        others.insert("precision".into(), "bf16".into());
        let e = RunOptions { others, classes: vec!["cat".into(), "cow".into()], ..opts() }.check_resume(d.path()).unwrap_err().to_string();
        assert!(e.contains("--valid-col is_valid (this command: (not given))") && e.contains("--precision auto (this command: bf16)")
                && e.contains("2 classes (the data now has 2; new: cow; gone: dog)"), "{e}");
        // An older record (no options, no classes) checks what it has.
        RunOptions { others: BTreeMap::new(), classes: vec![], ..opts() }.save(d.path()).unwrap();
        RunOptions { classes: vec!["x".into()], ..opts() }.check_resume(d.path()).unwrap();
    }
}
