//! `kestrel pets`: the fastai book's chapter 5 pet-breeds run with its recipe —
//! EfficientNet-Lite0 (ImageNet weights), presize 460, size 224, min_scale 0.75, bs 32,
//! `fine_tune(4)` at base_lr 2e-3, no TTA — not `kestrel fine-tune`'s defaults, which are
//! kestrel's measured recipe (README "Training recipe").

use super::fine_tune::{FineTuneArgs, fine_tune, print_usage};
use super::model::PrecisionArg;
use crate::util::untar::pets_dir;
use anyhow::Context;
use clap::{Args, Parser, ValueEnum};
use std::path::{Path, PathBuf};

/// Arguments of `kestrel pets`.
#[derive(Args, Debug)]
pub struct PetsArgs {
    /// Folder of the Oxford-IIIT Pet photos (`images/` inside it, or the photos
    /// themselves). Default: $KESTREL_PETS_DIR, else the full dataset downloaded once into
    /// kestrel's cache (fastai `untar_data(URLs.PETS)`).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Output folder (report, plots, metrics, model).
    #[arg(long, value_name = "DIR", default_value = "runs/pets")]
    pub out: PathBuf,
    /// Seed of the split (without labels.csv), shuffles, augmentation and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Unfrozen epochs of `fine_tune` (the book: 4).
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    /// Frozen epochs of `fine_tune` (the book: 1).
    #[arg(long, default_value_t = 1)]
    pub freeze_epochs: usize,
    /// Numeric precision: auto, fp32, bf16, fp16 (see `kestrel fine-tune --help`).
    #[arg(long, value_enum, default_value = "auto", value_name = "P")]
    pub precision: PrecisionArg,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Continue an interrupted run from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Data-parallel training (see `kestrel fine-tune --help`).
    #[command(flatten)]
    pub dist: crate::distributed::DistArgs,
}

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    args: FineTuneArgs,
}

/// How the pet photos are labelled and split: the `fine-tune` data options for `dir`.
/// With a `labels.csv` (columns `fname`, `label`, `is_valid`) in `dir` or, when `dir` is
/// `…/images`, in its parent: that fixed split. Otherwise the book's
/// `RegexLabeller(r'^(.*)_\d+.jpg$')` on the file names and `RandomSplitter(0.2, seed)`.
pub fn pets_data_args(dir: &Path) -> Vec<String> {
    let images = if dir.join("images").is_dir() { dir.join("images") } else { dir.to_path_buf() };
    let csv = [dir.join("labels.csv"), images.parent().map_or_else(PathBuf::new, |p| p.join("labels.csv"))]
        .into_iter()
        .find(|c| c.is_file() && std::fs::read_to_string(c).is_ok_and(|t| t.lines().next().is_some_and(|h| h.split(',').any(|c| c.trim() == "is_valid"))));
    match csv {
        Some(c) => vec!["--csv".into(), c.display().to_string(), "--valid-col".into(), "is_valid".into()],
        None => vec!["--folder".into(), images.display().to_string(), "--label-re".into(), r"^(.+)_\d+\.jpg$".into()],
    }
}

/// The `kestrel fine-tune` arguments of the book's recipe on `dir`.
///
/// Errors: none in practice (the arguments are fixed); clap's if they were wrong.
pub fn pets_recipe(dir: &Path, a: &PetsArgs) -> crate::Result<FineTuneArgs> {
    let mut argv: Vec<String> = vec!["kestrel-pets".into()];
    argv.extend(pets_data_args(dir));
    for (k, v) in [
        ("--arch", "efficientnet_lite0".to_string()), ("--presize", "460".into()), ("--size", "224".into()),
        ("--min-scale", "0.75".into()), ("--bs", "32".into()), ("--lr", "2e-3".into()), ("--tta", "false".into()),
        // The recipe's lr is fixed: no lr_find sweep (`kestrel lr-find` draws the plot).
        ("--precision", a.precision.to_possible_value().map_or("auto".into(), |v| v.get_name().to_string())),
        ("--epochs", a.epochs.to_string()), ("--freeze-epochs", a.freeze_epochs.to_string()),
        ("--seed", a.seed.to_string()), ("--device", a.device.clone()), ("--out", a.out.display().to_string()),
    ] {
        argv.push(k.into());
        argv.push(v);
    }
    if a.resume { argv.push("--resume".into()); }
    let mut args = Wrap::try_parse_from(argv).context("the pets recipe's options")?.args;
    args.dist = a.dist.clone();
    Ok(args)
}

/// Runs `kestrel pets`: finds (or downloads) the photos, runs the recipe, prints the
/// final error rate and where the report is.
///
/// Errors: as [`pets_dir`] (offline: points at --data) and [`fine_tune`].
pub fn run(a: PetsArgs) -> crate::Result<()> {
    let dir = pets_dir(a.data.as_deref(), true)?;
    let args = pets_recipe(&dir, &a)?;
    crate::distributed::launch_if_asked(&args.dist, &args.data.device)?;
    if std::env::var("RANK").map_or(true, |r| r.trim() == "0") {
        println!("pets: {} → {}", dir.display(), a.out.display());
    }
    let r = fine_tune(&args)?;
    if crate::distributed::group().is_some_and(|g| g.rank() != 0) { return Ok(()); }
    print_usage(&r);
    println!("final error_rate {:.4} (fine_tune {:.0} s)", r.error_rate, r.fit_secs);
    println!("report: {}", r.out.join("report.html").display());
    Ok(())
}
