//! `kestrel fine-tune`: the fastai book's chapter 5 in one command — `DataBlock` with
//! presizing and `aug_transforms`, `vision_learner`, `lr_find`, `fine_tune` — writing
//! the plots, the metrics, a checkpoint and `report.html` into `--out`.

use super::aug::AugOpts;
use super::data::DataOpts;
use crate::report::run::{RunFiles, write_run_report};
use crate::callbacks::{CSVLogger, InterruptCallback, ProgressCallback};
use crate::data::Datasets;
use crate::data::layout::FolderLayout;
use crate::data::show::{Denorm, show_loader_batch};
use crate::learner::{FineTuneOptions, Learner, LrFindOptions, vision_aug_batch_tfms, vision_learner};
use crate::models::Arch;
use crate::export::{Activation, ArchSpec, InferenceTransforms, ModelCard, OutputSpec, TrainingSummary, export, utc_now_iso8601};
use crate::interpret::{ClassificationInterpretation, MultiLabelReport, best_threshold, get_multi_preds, get_preds, plot_confusion_matrix, plot_top_losses};
use crate::learner::BCEWithLogitsLossFlat;
use crate::metrics::{F1ScoreMulti, accuracy_multi};
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
    /// The batch augmentation (fastai `aug_transforms`; the same options as `kestrel data`).
    #[command(flatten)]
    pub aug: AugOpts,
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
    /// Multi-label data (`--label-delim`): the decision threshold on each label's sigmoid
    /// for `accuracy_multi`, F1 and predictions (the book's 0.2; fastai's default 0.5), or
    /// `auto`: train with 0.2, then choose the threshold maximising F1 (samples) on the
    /// validation set and store it in the model file (the report says the scores were
    /// tuned on that set).
    #[arg(long, default_value = "0.2", value_name = "P|auto")]
    pub thresh: String,
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
    /// Multi-label runs: the outcome on the validation set at the model's threshold.
    pub multi_label: Option<MultiLabelOutcome>,
}

/// How a multi-label run ends on the validation set.
#[derive(Debug, Clone)]
pub struct MultiLabelOutcome {
    /// The threshold stored in the model file.
    pub thresh: f64,
    /// True when it was chosen on the validation set (`--thresh auto`).
    pub tuned: bool,
    /// F1 (samples) at `thresh`, in [0, 1].
    pub f1_samples: f64,
    /// accuracy_multi at `thresh`, in [0, 1].
    pub accuracy_multi: f64,
}

/// Runs `kestrel fine-tune` and prints where the outputs are.
///
/// Errors: as [`fine_tune`].
pub fn run(args: FineTuneArgs) -> crate::Result<()> {
    let r = fine_tune(&args)?;
    match &r.multi_label {
        Some(m) => println!("f1_score (samples) {:.4}, accuracy_multi {:.4} at threshold {}{}; outputs in {}",
                            m.f1_samples, m.accuracy_multi, m.thresh,
                            if m.tuned { " (chosen on the validation set: these scores are optimistic)" } else { "" },
                            r.out.display()),
        None => println!("error_rate {:.4}; outputs in {}", r.error_rate, r.out.display()),
    }
    println!("report: {}", r.out.join("report.html").display());
    Ok(())
}

/// The whole run: data, learner, lr_find (lr_find.png), `fine_tune` with the progress
/// table, then loss.png, show_batch.png, metrics.csv, `model.safetensors`, the interpretation
/// PNGs and report.html in `--out`.
/// On Ctrl-C the current batch finishes, `checkpoint.pth` is written and the error says
/// the command that resumes.
///
/// Errors: bad options (an unknown arch, `--lr` neither `auto` nor a positive number);
/// the data, weight and training errors; `--resume` without a checkpoint; an interrupt.
pub fn fine_tune(args: &FineTuneArgs) -> crate::Result<FineTuneResult> {
    let arch: Arch = args.arch.parse()?;
    let thresh = parse_thresh(&args.thresh)?;
    let lr_auto = args.lr.trim().eq_ignore_ascii_case("auto");
    let fixed_lr = if lr_auto { None } else { Some(parse_lr(&args.lr)?) };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(utc_stamp()));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create the output folder {}", out.display()))?;
    if args.resume && !out.join(format!("{CHECKPOINT}.pth")).is_file() {
        bail!("--resume: no {CHECKPOINT}.pth in {} to resume from", out.display());
    }

    let tfms = vision_aug_batch_tfms(arch, args.aug.to_aug()?)?;
    let norm = tfms.normalize().clone();
    let dls = args.data.to_datablock()?.batch_tfms(Some(Arc::new(tfms))).image_dataloaders()?;
    show_loader_batch(&dls.train, &dls.datasets.vocab, 3, 3, false,
                      Denorm::Stats { mean: norm.mean, std: norm.std }, &out.join("show_batch.png"))?;

    let weights = if args.no_pretrained { None } else { Some(weights_file(arch.name(), args.weights.as_deref(), true)?) };
    // fastai `set_seed(seed)`: the new head's initial weights come from torch's generator.
    tch::manual_seed(args.data.seed as i64);
    let mut learn = vision_learner(dls.dls(), arch, weights.as_deref())?.with_model_dir(&out).with_seed(args.data.seed);
    if dls.datasets.multi_labels.is_some() {
        // fastai's multi-label learner (book chapter 6): BCEWithLogitsLossFlat,
        // accuracy_multi and F1ScoreMulti(average='samples') at the threshold.
        let t = thresh.unwrap_or(DEFAULT_THRESH);
        learn.loss_func = Box::new(BCEWithLogitsLossFlat { thresh: t });
        learn.metrics = vec![accuracy_multi(t), Box::new(F1ScoreMulti::new(t))];
    }
    if args.channels_last { learn.to_channels_last(); }
    if args.fp16 { learn.to_fp16()?; }
    if args.bf16 { learn.to_bf16()?; }

    let lr = if args.resume {
        fixed_lr.context("--resume needs the learning rate of the interrupted run as --lr VALUE")?
    } else {
        find_lr(&mut learn, args, &out, fixed_lr)?
    };
    let csv = out.join("metrics.csv");
    if !args.resume && csv.exists() { std::fs::remove_file(&csv)?; }
    let mut learn = learn
        .with_cb(Box::new(ProgressCallback::new()))
        .with_cb(Box::new(CSVLogger::new(&csv, true)))
        .with_cb(Box::new(InterruptCallback::on_ctrl_c(CHECKPOINT)?));
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
    finish(&mut learn, args, arch, lr, fit_secs, &dls.datasets, &out, thresh)
}

/// The book's multi-label threshold (chapter 6: `partial(accuracy_multi, thresh=0.2)`).
pub const DEFAULT_THRESH: f64 = 0.2;

/// `--thresh`: `auto` (None) or a probability in (0, 1).
fn parse_thresh(s: &str) -> crate::Result<Option<f64>> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(Some(v)),
        _ => bail!("--thresh {s}: expected `auto` or a probability between 0 and 1 such as 0.2"),
    }
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
#[allow(clippy::too_many_arguments)]
fn finish(
    learn: &mut Learner,
    args: &FineTuneArgs,
    arch: Arch,
    lr: f64,
    fit_secs: f64,
    ds: &Datasets,
    out: &std::path::Path,
    thresh: Option<f64>,
) -> crate::Result<FineTuneResult> {
    let valid_items: Vec<PathBuf> = ds.valid.iter().map(|&i| ds.items.paths[i].clone()).collect();
    learn.recorder.plot_loss(&out.join("loss.png"))?;
    let names = learn.metric_names();
    let last = learn.recorder.values.last().cloned().unwrap_or_default();
    let metrics = names.iter().cloned().zip(last.iter().copied()).filter(|(n, _)| n != "train_loss").collect();
    let mut settings = settings(args, arch, lr, learn, ds.train.len());
    let (error_rate, extra, output, multi_label) = if ds.multi_labels.is_some() {
        let (m, output, extra) = interpret_valid_multi(learn, ds.valid.len(), thresh)?;
        settings.push(("final f1_score (samples) / accuracy_multi".into(), format!("{:.4} / {:.4}", m.f1_samples, m.accuracy_multi)));
        settings.push(("threshold".into(), output.thresh_source.clone().unwrap_or_default()));
        (f64::NAN, extra, output, Some(m))
    } else {
        let col = names.iter().position(|n| n == "error_rate").context("the learner records no error_rate")?;
        let error_rate = last.get(col).copied().unwrap_or(f64::NAN);
        (error_rate, interpret_valid(learn, &valid_items, out)?, OutputSpec::default(), None)
    };
    export_model(learn, args, arch, metrics, output, &out.join(MODEL_FILE))?;
    write_run_report(&RunFiles { out: out.to_path_buf(), settings, error_rate, fit_secs, extra })?;
    let _ = std::fs::remove_file(learn.checkpoint_path(CHECKPOINT));
    Ok(FineTuneResult { out: out.to_path_buf(), error_rate, fit_secs, lr, multi_label })
}

/// The multi-label ending: sigmoid predictions on the validation set, the threshold
/// (`--thresh P`, or with `auto` the one maximising F1 (samples) there), the per-label
/// precision / recall / support table for the report.
fn interpret_valid_multi(learn: &Learner, n_valid: usize, thresh: Option<f64>) -> crate::Result<(MultiLabelOutcome, OutputSpec, Vec<Section>)> {
    let p = get_multi_preds(learn.model.as_ref(), learn.dls.valid.as_ref())?;
    let (t, source) = match thresh {
        Some(t) => (t, format!("--thresh {t}")),
        None => {
            let (t, _) = best_threshold(&p.probs, &p.targets);
            (t, format!("--thresh auto: {t} maximises F1 (samples) on the validation set ({n_valid} photos); \
                         the scores at it are tuned on that set, so optimistic"))
        }
    };
    let r = MultiLabelReport::new(&p.probs, &p.targets, learn.dls.vocab.items(), t)?;
    println!("{r}");
    let m = MultiLabelOutcome { thresh: t, tuned: thresh.is_none(), f1_samples: r.f1_samples, accuracy_multi: r.accuracy_multi };
    let output = OutputSpec { activation: Activation::Sigmoid, thresh: Some(t), thresh_source: Some(source.clone()) };
    let extra = vec![Section::Table {
        title: format!("Per-label precision and recall on the validation set ({}; threshold from {source})", r.summary()),
        header: MultiLabelReport::header(),
        rows: r.rows(),
    }];
    Ok((m, output, extra))
}

/// Writes the self-contained model file (weights + architecture, vocabulary, inference
/// transforms and a training summary) that `kestrel predict` and `Predictor::load` read.
fn export_model(
    learn: &Learner,
    args: &FineTuneArgs,
    arch: Arch,
    metrics: std::collections::BTreeMap<String, f64>,
    output: OutputSpec,
    path: &std::path::Path,
) -> crate::Result<()> {
    let norm = vision_aug_batch_tfms(arch, args.aug.to_aug()?)?;
    let n = norm.normalize();
    let aug = norm.aug().cloned();
    let card = ModelCard {
        arch: ArchSpec { name: arch.name().to_string(), n_out: learn.dls.vocab.len(), hyper: serde_json::Value::Null },
        vocab: learn.dls.vocab.items().to_vec(),
        transforms: InferenceTransforms {
            presize: args.data.presize,
            size: args.aug.size as u32,
            resize_method: "crop".into(),
            pad_mode: "reflection".into(),
            mean: n.mean,
            std: n.std,
            augment: aug,
        },
        training: Some(TrainingSummary { epochs: args.freeze_epochs + args.epochs, metrics, date: utc_now_iso8601() }),
        output,
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
        Section::Text { title: "Classification report (per-class precision, recall and support)".into(), body: interp.classification_report().to_string() },
        Section::Table {
            title: "Top losses (files with the same name in different folders keep their folder)".into(),
            header: ["file", "actual", "predicted", "loss", "probability"].map(String::from).to_vec(),
            rows: interp.top_losses_rows(9),
        },
    ])
}

fn settings(args: &FineTuneArgs, arch: Arch, lr: f64, learn: &Learner, n_train: usize) -> Vec<(String, String)> {
    let d = &args.data;
    let data = match (&d.csv, &d.folder) {
        (Some(c), _) => format!("{} ({})", c.display(), d.valid_col.as_deref().map_or("RandomSplitter".into(), |v| format!("split by column {v}"))),
        (None, Some(f)) => {
            let layout = d.layout().ok().flatten();
            let labels = match (&layout, d.label_from) {
                (Some(FolderLayout::Split { .. } | FolderLayout::Classes { .. }), None) => "class folders".to_string(),
                _ => format!("labels: {}", d.label_re),
            };
            let split = match (&d.valid_list, &layout) {
                (Some(v), _) => format!("FileSplitter({})", v.display()),
                (None, Some(l @ FolderLayout::Split { .. })) => l.describe(),
                _ => format!("RandomSplitter({})", d.valid_pct),
            };
            format!("{} ({labels}, {split})", f.display())
        }
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
        ("presize", d.presize.to_string()),
        ("augmentation (aug_transforms)", args.aug.describe()),
        ("bs", d.bs.to_string()),
        ("sampling", if d.balance { "class-balanced (--balance: weights 1/class count, with replacement)".into() } else { "each training photo once per epoch, shuffled".into() }),
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
