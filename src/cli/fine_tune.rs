//! `kestrel fine-tune`: the fastai book's chapter 5 in one command — `DataBlock` with
//! presizing and `aug_transforms`, `vision_learner`, `lr_find`, `fine_tune` — writing
//! the plots, the metrics, a checkpoint and `report.html` into `--out`.

use super::data::DataOpts;
use crate::report::run::{RunFiles, write_run_report};
use crate::callbacks::{CSVLogger, InterruptCallback, ProgressCallback, SaveCheckpoint, interrupt_requested};
use crate::data::Datasets;
use crate::data::show::{Denorm, show_loader_batch};
use crate::learner::{FineTuneOptions, Learner, LrFindOptions, vision_batch_tfms, vision_learner};
use crate::models::Arch;
use crate::export::{ArchSpec, InferenceTransforms, ModelCard, TrainingSummary, export, utc_now_iso8601};
use crate::interpret::{ClassificationInterpretation, get_preds, plot_confusion_matrix, plot_top_losses};
use crate::models::zoo::weights_file;
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
    /// Architecture: resnet18, resnet34, resnet50, resnet101, resnet152,
    /// efficientnet_lite0 … efficientnet_lite4 (fastai `vision_learner(dls, arch)`).
    #[arg(long, default_value = "efficientnet_lite0")]
    pub arch: String,
    /// Start from random weights instead of ImageNet-pretrained ones (fastai
    /// `pretrained=False`).
    #[arg(long)]
    pub no_pretrained: bool,
    /// Pretrained weight file to use instead of the downloaded/installed one.
    #[arg(long, value_name = "FILE", conflicts_with = "no_pretrained")]
    pub weights: Option<PathBuf>,
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
    /// Base learning rate of `fine_tune`, or `auto`: run `lr_find` and use its `valley`
    /// suggestion. fastai's default base_lr is 2e-3.
    #[arg(long, default_value = "2e-3")]
    pub lr: String,
    /// Batches of the `lr_find` sweep (fastai `num_it=100`); lr_find.png is drawn whenever the
    /// sweep gives suggestions (at least 10 batches that do not diverge at once).
    #[arg(long, default_value_t = 100)]
    pub lr_find_iters: usize,
    /// Mixed precision with float16 and loss scaling (fastai `to_fp16`); needs a CUDA GPU.
    #[arg(long, conflicts_with = "bf16")]
    pub fp16: bool,
    /// bfloat16 autocast of the forward pass, float32 weights (`Learner::to_bf16`): on
    /// CPUs with AMX (and on GPUs) faster than float32 at about the same error rate.
    #[arg(long)]
    pub bf16: bool,
    /// Channels-last memory layout of weights and batches (PyTorch
    /// `memory_format=torch.channels_last`): the fastest layout for these convolutions on
    /// the CPU (default true; `--channels-last false` for NCHW).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub channels_last: bool,
    /// Folder for the outputs (default `runs/<UTC date>-<time>`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run whose `checkpoint.pth` is in --out (give the same
    /// options as the interrupted command; kestrel prints the exact command).
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// Also write `checkpoint.pth` periodically, so that a run killed without warning
    /// (`kill -9`, the OOM killer, a power cut) loses at most that much work: `500b` every
    /// 500 training batches (and at each epoch end), `1e` after every epoch. Each write is
    /// atomic; `--resume` continues from the last one exactly. Default: only on Ctrl-C or
    /// SIGTERM.
    #[arg(long, value_name = "Nb|Ne", value_parser = parse_checkpoint_every)]
    pub checkpoint_every: Option<CheckpointEvery>,
}

/// How often `--checkpoint-every` writes the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointEvery {
    /// Every N training batches (counted within each phase of `fine_tune`) and at epoch ends.
    Batches(usize),
    /// After every N epochs of each phase.
    Epochs(usize),
}

/// Parses `--checkpoint-every`: a positive number followed by `b`/`batches` or
/// `e`/`epochs`, e.g. `500b`, `1e`.
///
/// Errors: no unit, an unknown unit, or not a positive number.
pub fn parse_checkpoint_every(s: &str) -> Result<CheckpointEvery, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("{s}: expected a positive number with a unit, e.g. 500b or 1e"))?;
    match unit.trim() {
        "b" | "batch" | "batches" => Ok(CheckpointEvery::Batches(n)),
        "e" | "epoch" | "epochs" => Ok(CheckpointEvery::Epochs(n)),
        "" => Err(format!("{s}: say batches or epochs, e.g. {n}b or {n}e")),
        u => Err(format!("{s}: unknown unit {u:?} (b = batches, e = epochs)")),
    }
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
}

/// Runs `kestrel fine-tune` and prints where the outputs are.
///
/// Errors: as [`fine_tune`].
pub fn run(args: FineTuneArgs) -> crate::Result<()> {
    let r = fine_tune(&args)?;
    println!("error_rate {:.4}; outputs in {}", r.error_rate, r.out.display());
    println!("report: {}", r.out.join("report.html").display());
    Ok(())
}

/// The whole run: data, learner, lr_find (lr_find.png), `fine_tune` with the progress
/// table, then loss.png, show_batch.png, metrics.csv, `model.safetensors`, the interpretation
/// PNGs and report.html in `--out`.
/// On Ctrl-C or SIGTERM the current batch finishes, `checkpoint.pth` is written and the
/// error says the command that resumes; in validation the checkpoint is the end of the
/// epoch's training; during lr_find nothing is written (nothing was trained yet); after
/// training the model file is written first. Whatever the phase, the process ends within
/// 10 s of the signal ([`crate::callbacks::GRACE`]).
///
/// Errors: bad options (an unknown arch, `--lr` neither `auto` nor a positive number);
/// the data, weight and training errors; `--resume` without a checkpoint; an interrupt.
pub fn fine_tune(args: &FineTuneArgs) -> crate::Result<FineTuneResult> {
    let arch: Arch = args.arch.parse()?;
    let lr_auto = args.lr.trim().eq_ignore_ascii_case("auto");
    let fixed_lr = if lr_auto { None } else { Some(parse_lr(&args.lr)?) };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(utc_stamp()));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create the output folder {}", out.display()))?;
    if args.resume && !out.join(format!("{CHECKPOINT}.pth")).is_file() {
        bail!("--resume: no {CHECKPOINT}.pth in {} to resume from", out.display());
    }

    crate::callbacks::install_handler()?;
    let tfms = vision_batch_tfms(arch, args.size, args.min_scale)?;
    let norm = tfms.normalize().clone();
    let dls = args.data.to_datablock()?.batch_tfms(Some(Arc::new(tfms))).image_dataloaders()?;
    show_loader_batch(&dls.train, &dls.datasets.vocab, 3, 3, false,
                      Denorm::Stats { mean: norm.mean, std: norm.std }, &out.join("show_batch.png"))?;

    let weights = if args.no_pretrained { None } else { Some(weights_file(arch.name(), args.weights.as_deref(), true)?) };
    // fastai `set_seed(seed)`: the new head's initial weights come from torch's generator.
    tch::manual_seed(args.data.seed as i64);
    let mut learn = vision_learner(dls.dls(), arch, weights.as_deref())?.with_model_dir(&out).with_seed(args.data.seed);
    if args.channels_last { learn.to_channels_last(); }
    if args.fp16 { learn.to_fp16()?; }
    if args.bf16 { learn.to_bf16()?; }

    let lr = if args.resume {
        fixed_lr.context("--resume needs the learning rate of the interrupted run as --lr VALUE")?
    } else {
        find_lr(&mut learn, args, &out, fixed_lr)?
    };
    if interrupt_requested() {
        bail!("interrupted before training (nothing to resume); run the same command again:\n  {}", plain_command());
    }
    crate::callbacks::set_resume_hint(learn.checkpoint_path(CHECKPOINT), resume_command(lr, &out));
    let csv = out.join("metrics.csv");
    if !args.resume && csv.exists() { std::fs::remove_file(&csv)?; }
    let learn = learn
        .with_cb(Box::new(ProgressCallback::new()))
        .with_cb(Box::new(CSVLogger::new(&csv, true)))
        .with_cb(Box::new(InterruptCallback::on_ctrl_c(CHECKPOINT)?));
    let mut learn = match args.checkpoint_every {
        Some(CheckpointEvery::Batches(n)) => learn.with_cb(Box::new(SaveCheckpoint::new(CHECKPOINT, Some(n)))),
        Some(CheckpointEvery::Epochs(n)) => learn.with_cb(Box::new(SaveCheckpoint::every_epochs(CHECKPOINT, n))),
        None => learn,
    };
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
    finish(&mut learn, args, arch, lr, fit_secs, &dls.datasets, &out)
}

/// Runs `lr_find` (restoring the weights afterwards), draws lr_find.png, and returns the
/// base learning rate: `fixed` when given, else the valley suggestion (printed).
fn find_lr(learn: &mut Learner, args: &FineTuneArgs, out: &std::path::Path, fixed: Option<f64>) -> crate::Result<f64> {
    let o = LrFindOptions { num_it: args.lr_find_iters, ..LrFindOptions::default() };
    let found = learn.lr_find(o);
    let r = match (found, fixed) {
        (Ok(r), _) => r,
        // With a fixed lr the sweep is only informative: a too-short sweep is not fatal.
        (Err(e), Some(lr)) => { eprintln!("lr_find: {e:#} (continuing with --lr {lr:e})"); return Ok(lr); }
        (Err(e), None) => return Err(e.context("--lr auto needs a learning-rate sweep; give --lr VALUE instead")),
    };
    r.plot(&out.join("lr_find.png"))?;
    Ok(match fixed {
        Some(lr) => lr,
        None => {
            println!("lr_find: valley {:.2e} (minimum/10 {:.2e}, steep {:.2e}); using {:.2e}",
                     r.valley.lr, r.minimum.lr, r.steep.lr, r.valley.lr);
            r.valley.lr
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
    fit_secs: f64,
    ds: &Datasets,
    out: &std::path::Path,
) -> crate::Result<FineTuneResult> {
    let valid_items: Vec<PathBuf> = ds.valid.iter().map(|&i| ds.items.paths[i].clone()).collect();
    let names = learn.metric_names();
    let col = names.iter().position(|n| n == "error_rate").context("the learner records no error_rate")?;
    let last = learn.recorder.values.last().cloned().unwrap_or_default();
    let error_rate = last.get(col).copied().unwrap_or(f64::NAN);
    let metrics = names.iter().cloned().zip(last.iter().copied()).filter(|(n, _)| n != "train_loss").collect();
    // The trained model first: a signal after training still leaves it on disk.
    export_model(learn, args, arch, metrics, &out.join(MODEL_FILE))?;
    stop_if_interrupted(learn, lr, out)?;
    learn.recorder.plot_loss(&out.join("loss.png"))?;
    stop_if_interrupted(learn, lr, out)?;
    let extra = interpret_valid(learn, &valid_items, out)?;
    stop_if_interrupted(learn, lr, out)?;
    let settings = settings(args, arch, lr, learn, ds.train.len());
    write_run_report(&RunFiles { out: out.to_path_buf(), settings, error_rate, fit_secs, extra })?;
    let _ = std::fs::remove_file(learn.checkpoint_path(CHECKPOINT));
    Ok(FineTuneResult { out: out.to_path_buf(), error_rate, fit_secs, lr })
}

/// After training, on SIGINT/SIGTERM: writes the checkpoint of the finished training (the
/// resumed run only redoes the outputs) and returns the error with the resume command.
fn stop_if_interrupted(learn: &Learner, lr: f64, out: &std::path::Path) -> crate::Result<()> {
    if !interrupt_requested() {
        return Ok(());
    }
    let _guard = crate::callbacks::SavingGuard::new();
    let ckpt = learn.save(CHECKPOINT, Some(learn.position_after_epoch()))?;
    bail!("interrupted after training: the model is saved in {}, the plots and report.html are not written; \
           checkpoint written to {}\nresume with:\n  {}", out.join(MODEL_FILE).display(), ckpt.display(), resume_command(lr, out));
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
        training: Some(TrainingSummary { epochs: args.freeze_epochs + args.epochs, metrics, date: utc_now_iso8601() }),
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

fn settings(args: &FineTuneArgs, arch: Arch, lr: f64, learn: &Learner, n_train: usize) -> Vec<(String, String)> {
    let d = &args.data;
    let data = match (&d.csv, &d.folder) {
        (Some(c), _) => format!("{} ({})", c.display(), d.valid_col.as_deref().map_or("RandomSplitter".into(), |v| format!("split by column {v}"))),
        (None, Some(f)) => format!("{} (labels: {}, RandomSplitter({}))", f.display(), d.label_re, d.valid_pct),
        (None, None) => String::new(),
    };
    let precision = if args.fp16 { "fp16" } else if args.bf16 { "bf16 autocast" } else { "fp32" };
    [
        ("data", data),
        ("classes", learn.dls.vocab.len().to_string()),
        ("train / valid images", format!("{n_train} / {} ({} trained on per epoch: {} batches of {}, the last \
            incomplete batch dropped as fastai does)", learn.dls.valid.n_items(), learn.dls.train.n_items(),
            learn.dls.train.n_batches(), args.data.bs)),
        ("arch", format!("{arch}{}", if args.no_pretrained { " (random init)" } else { " (ImageNet pretrained)" })),
        ("presize / size / min_scale", format!("{} / {} / {}", d.presize, args.size, args.min_scale)),
        ("bs", d.bs.to_string()),
        ("fine_tune", format!("{} epochs (+{} frozen), base_lr {lr:.2e}{}", args.epochs, args.freeze_epochs,
                              if args.lr.eq_ignore_ascii_case("auto") { " (lr_find valley)" } else { "" })),
        ("precision / layout", format!("{precision} / {}", if args.channels_last { "channels-last" } else { "NCHW" })),
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

/// The command line of this process, quoted for a shell, with `kestrel` as its program.
fn plain_command() -> String {
    let mut cmd: Vec<String> = std::env::args().map(|a| shell_quote(&a)).collect();
    if cmd.first().is_some_and(|c| c.contains("kestrel")) { cmd[0] = "kestrel".into(); }
    cmd.join(" ")
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
