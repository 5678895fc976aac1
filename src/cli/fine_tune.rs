//! `kestrel fine-tune`: the fastai book's chapter 5 in one command — `DataBlock` with
//! presizing and `aug_transforms`, `vision_learner`, `lr_find`, `fine_tune` — writing
//! the plots, the metrics, a checkpoint and `report.html` into `--out`.

use super::data::DataOpts;
use super::lr_find::print_suggestions;
use super::model::{ModelOpts, PrecisionArg};
use crate::report::run::{RunFiles, write_run_report};
use crate::callbacks::{CSVLogger, InterruptCallback, ProgressCallback};
use crate::data::Datasets;
use crate::data::show::{Denorm, show_loader_batch};
use crate::callbacks::{EpochUsage, ResourceUsageCallback};
use crate::learner::{FineTuneOptions, Learner, LrFindOptions, vision_batch_tfms};
use crate::models::Arch;
use crate::export::{ArchSpec, InferenceTransforms, ModelCard, TrainingSummary, export, utc_now_iso8601};
use crate::interpret::{ClassificationInterpretation, get_preds, plot_confusion_matrix, plot_top_losses};
use crate::report::Section;
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Name of the resumable checkpoint in `--out` (`checkpoint.pth`).
pub const CHECKPOINT: &str = "checkpoint";
/// File name of the exported model in `--out` (read by `kestrel predict`, `Predictor::load`).
pub const MODEL_FILE: &str = "model.safetensors";

/// Arguments of `kestrel fine-tune`.
#[derive(Args, Debug, Clone)]
pub struct FineTuneArgs {
    /// The data (the same options as `kestrel data`).
    #[command(flatten)]
    pub data: DataOpts,
    /// The network (the same options as `kestrel lr-find`).
    #[command(flatten)]
    pub model: ModelOpts,
    /// Side of the square training images after the batch transforms (fastai
    /// `aug_transforms(size=...)`), pixels.
    #[arg(long, default_value_t = 224)]
    pub size: i64,
    /// Smallest fraction of the image area the random-resized crop keeps (fastai
    /// `aug_transforms(min_scale=...)`).
    #[arg(long, default_value_t = 0.75)]
    pub min_scale: f64,
    /// Epochs with the whole network trainable (fastai `fine_tune(epochs)`).
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    /// Epochs training only the head first, the pretrained body frozen (fastai
    /// `fine_tune(freeze_epochs=1)`).
    #[arg(long, default_value_t = 1)]
    pub freeze_epochs: usize,
    /// Base learning rate of `fine_tune`, or `auto`: run an `lr_find` sweep first and use
    /// its `valley` suggestion. fastai's default base_lr is 2e-3. With a number no sweep
    /// runs (unless --lr-find).
    #[arg(long, default_value = "2e-3")]
    pub lr: String,
    /// Also run the `lr_find` sweep before training with a fixed --lr, to draw
    /// lr_find.png (`kestrel lr-find` draws it without training).
    #[arg(long)]
    pub lr_find: bool,
    /// Batches of the `lr_find` sweep of `--lr auto`/`--lr-find` (fastai `num_it=100`),
    /// capped at the number of training batches of the run: a sweep is never longer than
    /// the training it precedes. Suggestions need at least 10 batches that do not diverge
    /// at once.
    #[arg(long, default_value_t = 100)]
    pub lr_find_iters: usize,
    /// Folder for the outputs (default `runs/<UTC date>-<time>`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run whose `checkpoint.pth` is in --out (give the same
    /// options as the interrupted command; kestrel prints the exact command).
    #[arg(long, requires = "out")]
    pub resume: bool,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct FineTuneResult {
    /// The output folder.
    pub out: PathBuf,
    /// Validation error rate after the last epoch, in [0, 1].
    pub error_rate: f64,
    /// Wall time of `fine_tune` (without lr_find and the outputs), seconds.
    pub fit_secs: f64,
    /// The base learning rate used.
    pub lr: f64,
    /// Batches of the lr_find sweep before training (0: no sweep).
    pub lr_find_batches: usize,
    /// Resource usage of each training phase (frozen and unfrozen epochs), in order.
    pub epoch_usage: Vec<EpochUsage>,
}

/// Runs `kestrel fine-tune` and prints where the outputs are.
///
/// Errors: as [`fine_tune`].
pub fn run(args: FineTuneArgs) -> crate::Result<()> {
    let r = fine_tune(&args)?;
    print_usage(&r);
    println!("error_rate {:.4} (fine_tune {:.1} s); outputs in {}", r.error_rate, r.fit_secs, r.out.display());
    println!("report: {}", r.out.join("report.html").display());
    Ok(())
}

/// Prints the training epochs' CPU time, kernel share, page faults and peak RSS, and the
/// allocator in use (the lines `scripts/bench/pets_vs_fastai.sh` reads).
pub fn print_usage(r: &FineTuneResult) {
    for e in &r.epoch_usage {
        println!("epoch usage: phase {} epoch {}: {:.1} s wall, {}", e.phase, e.epoch, e.wall_s, e.usage);
    }
    let (u, s) = r.epoch_usage.iter().fold((0.0, 0.0), |(u, s), e| (u + e.usage.user_s, s + e.usage.system_s));
    if u + s > 0.0 {
        println!("training epochs: kernel {:.1}% of CPU time (user {u:.1} s, system {s:.1} s); peak RSS {:.2} GB; malloc: {}",
                 100.0 * s / (u + s), crate::util::rusage::Usage::now().max_rss as f64 / 1e9, crate::util::alloc::malloc_in_use());
    }
}

/// The whole run: data, learner, lr_find when asked (lr_find.png), `fine_tune` with the progress
/// table, then loss.png, show_batch.png, metrics.csv, `model.safetensors`, the interpretation
/// PNGs and report.html in `--out`.
/// On Ctrl-C the current batch finishes, `checkpoint.pth` is written and the error says
/// the command that resumes.
///
/// Errors: bad options (an unknown arch, `--lr` neither `auto` nor a positive number);
/// the data, weight and training errors; `--resume` without a checkpoint; an interrupt.
pub fn fine_tune(args: &FineTuneArgs) -> crate::Result<FineTuneResult> {
    let arch: Arch = args.model.arch()?;
    let lr_auto = args.lr.trim().eq_ignore_ascii_case("auto");
    let fixed_lr = if lr_auto { None } else { Some(parse_lr(&args.lr)?) };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(utc_stamp()));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create the output folder {}", out.display()))?;
    if args.resume && !out.join(format!("{CHECKPOINT}.pth")).is_file() {
        bail!("--resume: no {CHECKPOINT}.pth in {} to resume from", out.display());
    }

    let tfms = vision_batch_tfms(arch, args.size, args.min_scale)?;
    let norm = tfms.normalize().clone();
    let dls = args.data.to_datablock()?.batch_tfms(Some(Arc::new(tfms))).image_dataloaders()?;
    show_loader_batch(&dls.train, &dls.datasets.vocab, 3, 3, false,
                      Denorm::Stats { mean: norm.mean, std: norm.std }, &out.join("show_batch.png"))?;

    let mut learn = args.model.learner(dls.dls(), args.data.seed, |_| Ok(()))?.with_model_dir(&out);

    let sweep = !args.resume && (lr_auto || args.lr_find);
    let (lr, lr_find_batches) = if args.resume {
        (fixed_lr.context("--resume needs the learning rate of the interrupted run as --lr VALUE")?, 0)
    } else if sweep {
        find_lr(&mut learn, args, &out, fixed_lr)?
    } else {
        (fixed_lr.context("a fixed --lr")?, 0)
    };
    let usage = ResourceUsageCallback::new();
    let epoch_usage = usage.records();
    let csv = out.join("metrics.csv");
    if !args.resume && csv.exists() { std::fs::remove_file(&csv)?; }
    let mut learn = learn
        .with_cb(Box::new(ProgressCallback::new()))
        .with_cb(Box::new(CSVLogger::new(&csv, true)))
        .with_cb(Box::new(InterruptCallback::on_ctrl_c(CHECKPOINT)?))
        .with_cb(Box::new(usage));
    if args.resume {
        let p = learn.load_checkpoint(CHECKPOINT)?;
        println!("resuming at phase {}, epoch {}, batch {}", p.phase, p.epoch, p.iter);
    }
    let opts = FineTuneOptions { freeze_epochs: args.freeze_epochs, ..FineTuneOptions::default() };
    let t0 = Instant::now();
    learn.fine_tune_with(args.epochs, lr, opts)?;
    let fit_secs = t0.elapsed().as_secs_f64();
    if learn.stop_reason.as_deref() == Some("interrupted") {
        bail!("interrupted: checkpoint written to {}\nresume with:\n  {}",
              learn.checkpoint_path(CHECKPOINT).display(), resume_command(lr, &out));
    }
    let mut r = finish(&mut learn, args, arch, lr, lr_find_batches, fit_secs, &dls.datasets, &out)?;
    r.epoch_usage = epoch_usage.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(r)
}

/// Runs the `lr_find` sweep (restoring the weights afterwards) for at most as many
/// batches as the training will run, draws lr_find.png and prints the suggestions; returns
/// the base learning rate — `fixed` when given, else the valley suggestion — and the
/// number of sweep batches.
fn find_lr(learn: &mut Learner, args: &FineTuneArgs, out: &std::path::Path, fixed: Option<f64>) -> crate::Result<(f64, usize)> {
    let training = (args.freeze_epochs + args.epochs) * learn.dls.train.n_batches();
    let o = LrFindOptions { num_it: args.lr_find_iters.min(training), ..LrFindOptions::default() };
    let found = learn.lr_find(o);
    let r = match (found, fixed) {
        (Ok(r), _) => r,
        // With a fixed lr the sweep is only informative: a too-short sweep is not fatal.
        (Err(e), Some(lr)) => { eprintln!("lr_find: {e:#} (continuing with --lr {lr:e})"); return Ok((lr, learn.recorder.losses.len())); }
        (Err(e), None) => return Err(e.context("--lr auto needs a learning-rate sweep; give --lr VALUE instead")),
    };
    r.plot(&out.join("lr_find.png"))?;
    print_suggestions(&r, o.num_it);
    Ok(match fixed {
        Some(lr) => (lr, r.lrs.len()),
        None => {
            println!("lr_find: using the valley suggestion {:.2e} as base_lr", r.valley.lr);
            (r.valley.lr, r.lrs.len())
        }
    })
}

/// After training: the exported model (`model.safetensors`), loss.png, the interpretation
/// of the validation set (confusion_matrix.png, top_losses.png, most_confused, the
/// classification report) and report.html.
fn finish(
    learn: &mut Learner,
    args: &FineTuneArgs,
    arch: Arch,
    lr: f64,
    lr_find_batches: usize,
    fit_secs: f64,
    ds: &Datasets,
    out: &std::path::Path,
) -> crate::Result<FineTuneResult> {
    let valid_items: Vec<PathBuf> = ds.valid.iter().map(|&i| ds.items.paths[i].clone()).collect();
    learn.recorder.plot_loss(&out.join("loss.png"))?;
    let names = learn.metric_names();
    let col = names.iter().position(|n| n == "error_rate").context("the learner records no error_rate")?;
    let last = learn.recorder.values.last().cloned().unwrap_or_default();
    let error_rate = last.get(col).copied().unwrap_or(f64::NAN);
    let metrics = names.iter().cloned().zip(last.iter().copied()).filter(|(n, _)| n != "train_loss").collect();
    export_model(learn, args, arch, metrics, &out.join(MODEL_FILE))?;
    let extra = interpret_valid(learn, &valid_items, out)?;
    let settings = settings(args, arch, lr, lr_find_batches, learn, ds.train.len());
    write_run_report(&RunFiles { out: out.to_path_buf(), settings, error_rate, fit_secs, extra })?;
    let _ = std::fs::remove_file(learn.checkpoint_path(CHECKPOINT));
    Ok(FineTuneResult { out: out.to_path_buf(), error_rate, fit_secs, lr, lr_find_batches, epoch_usage: vec![] })
}

/// Writes the self-contained model file (weights + architecture, vocabulary, inference
/// transforms and a training summary) that `kestrel predict` and `Predictor::load` read.
fn export_model(
    learn: &Learner,
    args: &FineTuneArgs,
    arch: Arch,
    metrics: std::collections::BTreeMap<String, f64>,
    path: &std::path::Path,
) -> crate::Result<()> {
    let norm = vision_batch_tfms(arch, args.size, args.min_scale)?;
    let n = norm.normalize();
    let aug = norm.aug().cloned();
    let card = ModelCard {
        arch: ArchSpec { name: arch.name().to_string(), n_out: learn.dls.vocab.len(), hyper: serde_json::Value::Null },
        vocab: learn.dls.vocab.items().to_vec(),
        transforms: InferenceTransforms {
            presize: args.data.presize,
            size: args.size as u32,
            resize_method: "crop".into(),
            pad_mode: "reflection".into(),
            mean: n.mean,
            std: n.std,
            augment: aug,
        },
        training: Some(TrainingSummary { epochs: args.freeze_epochs + args.epochs, metrics, date: utc_now_iso8601(),
                                         precision: Some(learn.precision.name().to_string()) }),
    };
    export(path, learn.model.as_ref(), &card)
}

/// fastai `ClassificationInterpretation` of the validation set: writes
/// confusion_matrix.png and top_losses.png and returns the report's most_confused table
/// and classification report.
fn interpret_valid(learn: &Learner, valid_items: &[PathBuf], out: &std::path::Path) -> crate::Result<Vec<Section>> {
    let preds = get_preds(learn.model.as_ref(), learn.dls.valid.as_ref())?;
    let interp = ClassificationInterpretation::new(&preds, learn.dls.vocab.items().to_vec(), valid_items.to_vec())?;
    plot_confusion_matrix(&interp, &out.join("confusion_matrix.png"), false)?;
    plot_top_losses(&interp, 9, &out.join("top_losses.png"))?;
    let rows = interp.most_confused(1).into_iter().map(|(a, p, c)| vec![a, p, c.to_string()]).collect();
    Ok(vec![
        Section::Table {
            title: "Most confused (fastai most_confused(min_val=1))".into(),
            header: vec!["actual".into(), "predicted".into(), "count".into()],
            rows,
        },
        Section::Text { title: "Classification report".into(), body: interp.classification_report().to_string() },
    ])
}

fn settings(args: &FineTuneArgs, arch: Arch, lr: f64, lr_find_batches: usize, learn: &Learner, n_train: usize) -> Vec<(String, String)> {
    let d = &args.data;
    let data = match (&d.csv, &d.folder) {
        (Some(c), _) => format!("{} ({})", c.display(), d.valid_col.as_deref().map_or("RandomSplitter".into(), |v| format!("split by column {v}"))),
        (None, Some(f)) => format!("{} (labels: {}, RandomSplitter({}))", f.display(), d.label_re, d.valid_pct),
        (None, None) => String::new(),
    };
    let precision = match (args.model.precision, learn.precision) {
        (PrecisionArg::Auto, p) => format!("{p} (--precision auto on {})", if crate::learner::fp16::cpu_has_native_bf16() { "a CPU with native bf16" } else { "this machine" }),
        (_, p) => p.to_string(),
    };
    let lr_find = if lr_find_batches > 0 { format!("{lr_find_batches} batches (lr_find.png)") } else { "not run (--lr given; --lr-find draws lr_find.png)".into() };
    [
        ("data", data),
        ("classes", learn.dls.vocab.len().to_string()),
        ("train / valid images", format!("{n_train} / {} ({} trained on per epoch: {} batches of {}, the last \
            incomplete batch dropped as fastai does)", learn.dls.valid.n_items(), learn.dls.train.n_items(),
            learn.dls.train.n_batches(), args.data.bs)),
        ("arch", format!("{arch}{}", if args.model.no_pretrained { " (random init)" } else { " (ImageNet pretrained)" })),
        ("presize / size / min_scale", format!("{} / {} / {}", d.presize, args.size, args.min_scale)),
        ("bs", d.bs.to_string()),
        ("fine_tune", format!("{} epochs (+{} frozen), base_lr {lr:.2e}{}", args.epochs, args.freeze_epochs,
                              if args.lr.eq_ignore_ascii_case("auto") { " (lr_find valley)" } else { "" })),
        ("lr_find", lr_find),
        ("precision / layout", format!("{precision} / {}", if args.model.channels_last { "channels-last" } else { "NCHW" })),
        ("seed", d.seed.to_string()),
        ("device", crate::util::device::device_name(learn.dls.train.device())),
        ("kestrel", env!("CARGO_PKG_VERSION").to_string()),
    ].into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// A positive learning rate from `--lr`. Errors: not a positive finite number.
fn parse_lr(s: &str) -> crate::Result<f64> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => bail!("--lr {s}: expected `auto` or a positive number such as 2e-3"),
    }
}

/// The command line of this process with `--resume`, `--out` and the lr actually used.
fn resume_command(lr: f64, out: &std::path::Path) -> String {
    let mut args: Vec<String> = std::env::args().collect();
    let mut cmd: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = std::mem::take(&mut args[i]);
        match a.as_str() {
            "--lr" | "--out" => i += 1,
            _ if a.starts_with("--lr=") || a.starts_with("--out=") || a == "--resume" => {}
            _ => cmd.push(shell_quote(&a)),
        }
        i += 1;
    }
    if cmd.first().is_some_and(|c| c.contains("kestrel")) { cmd[0] = "kestrel".into(); }
    let is_pets = cmd.get(1).is_some_and(|c| c == "pets");
    if !is_pets { cmd.push(format!("--lr {lr:e}")); }
    cmd.push(format!("--out {}", shell_quote(&out.display().to_string())));
    cmd.push("--resume".into());
    cmd.join(" ")
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%^".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `YYYYMMDD-HHMMSS` of the current UTC time (for the default output folder).
fn utc_stamp() -> String {
    jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string()
}
