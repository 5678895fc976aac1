//! `kestrel fine-tune`: the fastai book's chapter 5 in one command — `DataBlock` with
//! presizing and `aug_transforms`, `vision_learner`, `lr_find`, `fine_tune` — writing
//! the plots, the metrics, a checkpoint and `report.html` into `--out`.

use super::aug::AugOpts;
use super::data::DataOpts;
use super::recipe::{self, RecipeOpts};
use super::run_options::RunOptions;
use super::lr_find::print_suggestions;
use super::model::{ModelOpts, PrecisionArg};
use crate::report::run::{RUN_IMAGES, RunFiles, write_run_report};
use crate::callbacks::{CSVLogger, InterruptCallback, Interrupted, ProgressCallback, SaveCheckpoint, TerminateOnNaNCallback, interrupt_requested};
use crate::distributed::{DistArgs, DistRun, DistributedTrainer, launch_if_asked, mix_rank};
use crate::data::ImageDataLoaders;
use crate::data::layout::FolderLayout;
use crate::data::show::{Denorm, show_loader_batch};
use crate::callbacks::{EpochUsage, ResourceUsageCallback};
use crate::learner::lr_find::MIN_NUM_IT;
use crate::learner::{Learner, LrFindOptions, vision_aug_batch_tfms};
use crate::models::Arch;
use crate::export::{Activation, ArchSpec, InferenceTransforms, ModelCard, OutputSpec, TrainingSummary, export, utc_now_iso8601};
use crate::interpret::{ClassificationInterpretation, MultiLabelReport, best_threshold, get_multi_preds, get_preds, plot_confusion_matrix, plot_top_losses};
use crate::learner::BCEWithLogitsLossFlat;
use crate::metrics::{F1ScoreMulti, accuracy_multi};
use crate::report::Section;
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// The batch augmentation (fastai `aug_transforms`; the same options as `kestrel data`).
    #[command(flatten)]
    pub aug: AugOpts,
    /// Epochs with the whole network trainable (fastai `fine_tune(epochs)`). The default 7
    /// is kestrel's measured recipe (README "Training recipe"); the book runs 4.
    #[arg(long, default_value_t = 7)]
    pub epochs: usize,
    /// Epochs training only the head first, the pretrained body frozen (fastai
    /// `fine_tune(freeze_epochs=1)`). The default 2 is kestrel's measured recipe; fastai's is 1.
    #[arg(long, default_value_t = 2)]
    pub freeze_epochs: usize,
    /// Base learning rate of `fine_tune`, or `auto`: run an `lr_find` sweep first and use
    /// its `valley` suggestion. fastai's default base_lr is 2e-3. With a number no sweep
    /// runs (unless --lr-find).
    #[arg(long, default_value = "2e-3", allow_hyphen_values = true)]
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
    /// Multi-label data (`--label-delim`): the decision threshold on each label's sigmoid
    /// for `accuracy_multi`, F1 and predictions (the book's 0.2; fastai's default 0.5), or
    /// `auto`: train with 0.2, then choose the threshold maximising F1 (samples) on the
    /// validation set and store it in the model file (the report says the scores were
    /// tuned on that set). Refused on single-label data, whose predictions are the top
    /// class (`kestrel predict --min-prob` sets a floor on its probability there).
    #[arg(long, value_name = "P|auto")]
    pub thresh: Option<String>,
    /// Folder for the outputs (default `runs/<UTC date>-<time>`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run whose `checkpoint.pth` is in --out (give the same
    /// options as the interrupted command; kestrel prints the exact command).
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// Data-parallel training over N processes or machines (torchrun's options).
    #[command(flatten)]
    pub dist: DistArgs,
    /// Recipe options: label smoothing, MixUp, CutMix, EMA, TTA, time budget, wd, lr_mult, calibration.
    #[command(flatten)]
    pub recipe: RecipeOpts,
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
    /// Validation error rate with test-time augmentation, in [0, 1] (None: no TTA ran).
    pub tta_error_rate: Option<f64>,
    /// Wall time of `fine_tune` (without lr_find and the outputs), seconds.
    pub fit_secs: f64,
    /// The base learning rate used.
    pub lr: f64,
    /// Batches of the lr_find sweep before training (0: no sweep).
    pub lr_find_batches: usize,
    /// Resource usage of each training phase (frozen and unfrozen epochs), in order.
    pub epoch_usage: Vec<EpochUsage>,
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
    if args.epochs + args.freeze_epochs == 0 && args.recipe.time.is_none() {
        bail!("--epochs 0 with --freeze-epochs 0: nothing to train (fine_tune needs at least one epoch)");
    }
    launch_if_asked(&args.dist, &args.data.device)?;
    let r = fine_tune(&args)?;
    if crate::distributed::group().is_some_and(|g| g.rank() != 0) { return Ok(()); }
    print_usage(&r);
    match &r.multi_label {
        Some(m) => println!("f1_score (samples) {:.4}, accuracy_multi {:.4} at threshold {}{} (fine_tune {:.1} s); outputs in {}",
                            m.f1_samples, m.accuracy_multi, m.thresh,
                            if m.tuned { " (chosen on the validation set: these scores are optimistic)" } else { "" },
                            r.fit_secs, r.out.display()),
        None => println!("error_rate {:.4} (fine_tune {:.1} s); outputs in {}", r.error_rate, r.fit_secs, r.out.display()),
    }
    if let Some(e) = r.tta_error_rate {
        println!("error_rate_tta {e:.4} (test-time augmentation, fastai tta(n=4, beta=0.25); kestrel predict --tta predicts the same way, with its own random draws per photo)");
    }
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
/// On Ctrl-C or SIGTERM the current batch finishes, `checkpoint.pth` is written and the
/// error says the command that resumes; in validation the checkpoint is the end of the
/// epoch's training; during lr_find nothing is written (nothing was trained yet); after
/// training the model file is written first. Whatever the phase, the process ends within
/// 10 s of the signal ([`crate::callbacks::GRACE`]).
///
/// Errors: bad options (an unknown arch, `--lr` neither `auto` nor a positive number);
/// the data, weight and training errors; `--resume` without a checkpoint; an interrupt.
pub fn fine_tune(args: &FineTuneArgs) -> crate::Result<FineTuneResult> {
    let dist = DistRun::from_args(&args.dist, &args.data.device, args.data.bs)?;
    let args = &args_for_rank(args, dist.as_ref());
    let main = dist.as_ref().is_none_or(|d| d.is_main());
    let arch: Arch = args.model.arch()?;
    let thresh = args.thresh.as_deref().map(parse_thresh).transpose()?.unwrap_or(Some(DEFAULT_THRESH));
    args.recipe.validate()?;
    if dist.is_some() && args.recipe.time.is_some() {
        bail!("--time is not supported with data-parallel training (every rank must run the same epochs): give --epochs");
    }
    args.aug.check_presize(args.data.presize)?;
    args.data.check_training_bs()?;
    let lr_auto = args.lr.trim().eq_ignore_ascii_case("auto");
    let fixed_lr = if lr_auto { None } else { Some(parse_lr(&args.lr)?) };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(utc_stamp()));
    if let (None, Some(folder)) = (&args.data.csv, &args.data.folder)
        && let (Some(f), Some(o)) = (lexical_absolute(folder), lexical_absolute(&out))
        && o.starts_with(&f)
    {
        bail!("--out {} is inside the data folder {}: the run's plots would lie among the photos and be read as photos \
               by the next run; choose an output folder outside it", out.display(), folder.display());
    }
    if args.resume && !out.join(format!("{CHECKPOINT}.pth")).is_file() {
        bail!("--resume: no {CHECKPOINT}.pth in {} to resume from", out.display());
    }
    if !args.resume && main && out.join(format!("{CHECKPOINT}.pth")).is_file() {
        eprintln!("note: {} holds the checkpoint of an interrupted run; this run starts afresh and will replace it \
                   (--resume continues that run instead)", out.join(format!("{CHECKPOINT}.pth")).display());
    }

    crate::callbacks::install_handler()?;
    let tfms = vision_aug_batch_tfms(arch, args.aug.to_aug()?)?;
    let norm = *tfms.normalize();
    let block = args.data.to_datablock()?.batch_tfms(Some(Arc::new(tfms)));
    let full = block.image_dataloaders()?;
    if main {
        let (ds, vocab) = (&full.datasets, full.datasets.vocab.items());
        let shown: Vec<&str> = vocab.iter().take(8).map(String::as_str).collect();
        println!("data: {} training and {} validation photos, {} classes from {}: {}{}", ds.train.len(), ds.valid.len(),
                 vocab.len(), block.labeller.describe(), shown.join(", "), if vocab.len() > 8 { ", …" } else { "" });
    }
    let multi = full.datasets.multi_labels.is_some();
    if let (false, Some(t)) = (multi, &args.thresh) {
        bail!("--thresh {t}: a threshold applies to multi-label data (--label-delim), and this data is single-label \
               (one class per photo, the top one predicted); `kestrel predict --min-prob P` answers 'unknown' below P");
    }
    if multi {
        let r = &args.recipe;
        if r.label_smoothing.is_some() || r.mixup.is_some() || r.cutmix.is_some() || r.tta == Some(true) {
            bail!("--label-smoothing, --mixup, --cutmix and --tta are single-label options; this data is multi-label (--label-delim)");
        }
    }
    // Created once the data is read: a run refused for its data leaves no empty folder.
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create the output folder {}", out.display()))?;
    if main && !args.resume {
        // A fresh run into a used folder: the report must not show an earlier run's table
        // or plots that this run does not redraw (lr_find.png without a sweep, say).
        for file in RUN_IMAGES.iter().map(|(f, _)| *f).chain(["metrics.csv"]) {
            let p = out.join(file);
            if p.is_file() { std::fs::remove_file(&p).with_context(|| format!("cannot remove {} of an earlier run", p.display()))?; }
        }
    }
    if main {
        show_loader_batch(&full.train, &full.datasets.vocab, 3, 3, false,
                          Denorm::Stats { mean: norm.mean, std: norm.std }, &out.join("show_batch.png"))?;
    }
    let dls = match &dist { Some(d) => d.shard(&full)?, None => full.clone() };

    let mut learn = args.model.learner(dls.dls(), rank_seed(args, dist.as_ref()), |learn| {
        if multi {
            // fastai's multi-label learner (book chapter 6): BCEWithLogitsLossFlat,
            // accuracy_multi and F1ScoreMulti(average='samples') at the threshold.
            let t = thresh.unwrap_or(DEFAULT_THRESH);
            learn.loss_func = Box::new(BCEWithLogitsLossFlat { thresh: t });
            learn.metrics = vec![accuracy_multi(t), Box::new(F1ScoreMulti::new(t))];
        }
        Ok(())
    })?.with_model_dir(&out);

    let sweep = !args.resume && (lr_auto || args.lr_find);
    let (lr, lr_find_batches) = if args.resume {
        (fixed_lr.context("--resume needs the learning rate of the interrupted run as --lr VALUE")?, 0)
    } else if sweep {
        match &dist {
            Some(d) => {
                let mut n = 0;
                let lr = d.lr_from_rank0(|| find_lr(&mut learn, args, &out, fixed_lr).map(|(lr, k)| { n = k; lr }))?;
                (lr, n)
            }
            None => find_lr(&mut learn, args, &out, fixed_lr)?,
        }
    } else {
        (fixed_lr.context("a fixed --lr")?, 0)
    };
    if interrupt_requested() {
        return Err(Interrupted(format!("interrupted before training (nothing to resume); run the same command again:\n  {}", plain_command())).into());
    }
    let run_options = RunOptions {
        arch: args.model.arch.clone(),
        bs: args.data.bs,
        lr,
        seed: args.data.seed,
        freeze_epochs: args.freeze_epochs,
        epochs: args.recipe.time.is_none().then_some(args.epochs),
        presize: args.data.presize,
        size: args.aug.size,
        classes: learn.dls.vocab.items().to_vec(),
        others: super::run_options::command_options(),
    };
    if args.resume {
        run_options.check_resume(&out)?;
    } else if main {
        run_options.save(&out)?;
    }
    crate::callbacks::set_resume_hint(learn.checkpoint_path(CHECKPOINT), resume_command(lr, &out, args.epochs));
    let usage = ResourceUsageCallback::new();
    let epoch_usage = usage.records();
    let csv = out.join("metrics.csv");
    let learn = args.recipe.configure(learn);
    // A diverging run (NaN or infinite training loss) stops at once rather than train and
    // export NaN weights. One process only: with data parallelism a rank stopping alone
    // would leave the others waiting in the gradient all-reduce.
    let learn = if dist.is_none() { learn.with_cb(Box::new(TerminateOnNaNCallback)) } else { learn };
    let mut learn = if main {
        learn.with_cb(Box::new(ProgressCallback::new())).with_cb(Box::new(CSVLogger::new(&csv, true))).with_cb(Box::new(usage))
    } else {
        learn.with_cb(Box::new(usage))
    };
    // Data-parallel: DistributedTrainer averages the gradients and stops every rank when
    // any is interrupted (rank 0 writing the checkpoint), in place of InterruptCallback.
    let mut ddp_stats = None;
    let interrupt = InterruptCallback::on_ctrl_c(CHECKPOINT)?;
    learn = match &dist {
        Some(d) => {
            let t = DistributedTrainer::new(d.pg, interrupt.flag.clone(), CHECKPOINT)?;
            ddp_stats = Some(t.stats.clone());
            learn.with_cb(Box::new(t))
        }
        None => learn.with_cb(Box::new(interrupt)),
    };
    // Periodic checkpoints: rank 0 writes them, as every output.
    learn = match args.checkpoint_every.filter(|_| main) {
        Some(CheckpointEvery::Batches(n)) => learn.with_cb(Box::new(SaveCheckpoint::new(CHECKPOINT, Some(n)))),
        Some(CheckpointEvery::Epochs(n)) => learn.with_cb(Box::new(SaveCheckpoint::every_epochs(CHECKPOINT, n))),
        None => learn,
    };
    if args.resume {
        let p = learn.load_checkpoint(CHECKPOINT)?;
        learn.seed = Some(rank_seed(args, dist.as_ref()));
        if main { println!("resuming at phase {}, epoch {}, batch {}", p.phase, p.epoch, p.iter); }
    }
    let opts = args.recipe.fine_tune_options(args.freeze_epochs);
    learn.start_fit_clock();
    let epochs = args.recipe.fine_tune(&mut learn, args.epochs, lr, opts).map_err(|e| match &dist {
        // A peer lost inside backward (the Reducer's all-reduce) surfaces as libtorch's error.
        Some(d) => d.pg.name_lost_peer(e),
        None => keep_training_after_bad_item(&learn, e, lr, &out, args.epochs),
    })?;
    // With --resume: the interrupted process's time too.
    let fit_secs = learn.fit_secs();
    if learn.stop_reason.as_deref() == Some("interrupted") {
        if !main { return Err(Interrupted(format!("interrupted: rank 0 wrote the checkpoint to {}", learn.checkpoint_path(CHECKPOINT).display())).into()); }
        return Err(Interrupted(format!("interrupted: checkpoint written to {}\nresume with:\n  {}",
              learn.checkpoint_path(CHECKPOINT).display(),
              resume_command(lr, &out, if learn.phase == 1 { learn.n_epoch } else { args.epochs }))).into());
    }
    if let Some(r) = learn.stop_reason.as_deref().filter(|r| r.starts_with("TerminateOnNaN")) {
        bail!("training diverged ({r}); no model was exported. Lower the learning rate (--lr {:.0e}, a tenth of this one) \
               or choose one with `kestrel lr-find`", lr / 10.0);
    }
    if let Some(s) = ddp_stats.as_ref().map(|s| *s.lock().unwrap_or_else(|e| e.into_inner()))
        && main
        && s.steps > 0
    {
        println!("all-reduce of the gradients: {:.2} ms per step, {:.2} ms of it overlapped with backward ({} steps; c10d::Reducer, DDP's logger)",
                 1e3 * s.allreduce_secs / s.steps as f64, 1e3 * s.overlap_secs / s.steps as f64, s.steps);
    }
    if !main {
        // Multi-label runs record no error_rate: NaN here, rank 0 reports the metrics.
        let error_rate = last_error_rate(&learn).unwrap_or(f64::NAN);
        return Ok(FineTuneResult { out, error_rate, tta_error_rate: None, fit_secs, lr, multi_label: None, lr_find_batches, epoch_usage: vec![] });
    }
    // Rank 0 interprets the whole validation set.
    learn.dls = full.dls();
    let mut r = finish(&mut learn, args, arch, lr, lr_find_batches, fit_secs, epochs, &full, &out, thresh)?;
    r.epoch_usage = epoch_usage.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(r)
}

/// The options this rank runs with: with NCCL, the device is `cuda:LOCAL_RANK`.
fn args_for_rank(args: &FineTuneArgs, dist: Option<&DistRun>) -> FineTuneArgs {
    let mut a = args.clone();
    if let Some(d) = dist.filter(|d| d.pg.backend() == crate::distributed::Backend::Nccl) {
        a.data.device = format!("cuda:{}", d.local_rank);
    }
    a
}

/// `p` as an absolute path with `.` and `..` resolved by name (symbolic links are not
/// followed, and `p` need not exist); `None` when the working folder is unknown.
fn lexical_absolute(p: &std::path::Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in std::path::absolute(p).ok()?.components() {
        match c {
            std::path::Component::ParentDir => { out.pop(); }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// The learner's seed (dropout draws): each rank its own (rank 0 keeps `--seed`).
fn rank_seed(args: &FineTuneArgs, dist: Option<&DistRun>) -> u64 {
    mix_rank(args.data.seed, dist.map_or(0, |d| d.pg.rank()))
}

/// The error_rate of the last epoch in the recorder. Errors: no error_rate metric.
fn last_error_rate(learn: &Learner) -> crate::Result<f64> {
    let col = learn.metric_names().iter().position(|n| n == "error_rate").context("the learner records no error_rate")?;
    Ok(learn.recorder.values.last().and_then(|r| r.get(col)).copied().unwrap_or(f64::NAN))
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

/// Runs the `lr_find` sweep (restoring the weights afterwards) for at most as many
/// batches as the training will run, draws lr_find.png and prints the suggestions; returns
/// the base learning rate — `fixed` when given, else the valley suggestion — and the
/// number of sweep batches.
fn find_lr(learn: &mut Learner, args: &FineTuneArgs, out: &std::path::Path, fixed: Option<f64>) -> crate::Result<(f64, usize)> {
    let training = (args.freeze_epochs + args.epochs) * learn.dls.train.n_batches();
    let o = LrFindOptions { num_it: args.lr_find_iters.min(training), ..LrFindOptions::default() };
    if fixed.is_none() && o.num_it < MIN_NUM_IT {
        bail!("--lr auto: the sweep is never longer than the training, and this run trains {training} batches \
               (--lr-find-iters {}), fewer than the {MIN_NUM_IT} lr_find needs to suggest a rate; give a fixed --lr \
               (2e-3 is fastai's fine_tune default)", args.lr_find_iters);
    }
    let found = learn.lr_find(o);
    // A signal stops the sweep early too: that is not a diverged loss, and its partial
    // curve suggests nothing.
    if interrupt_requested() {
        return Err(Interrupted(format!("interrupted during the learning-rate sweep (nothing to resume); run the same command again:\n  {}", plain_command())).into());
    }
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
#[allow(clippy::too_many_arguments)]
fn finish(
    learn: &mut Learner,
    args: &FineTuneArgs,
    arch: Arch,
    lr: f64,
    lr_find_batches: usize,
    fit_secs: f64,
    epochs: usize,
    dls: &ImageDataLoaders,
    out: &std::path::Path,
    thresh: Option<f64>,
) -> crate::Result<FineTuneResult> {
    let ds = &dls.datasets;
    let valid_items: Vec<PathBuf> = ds.valid.iter().map(|&i| ds.items.paths[i].clone()).collect();
    let names = learn.metric_names();
    let last = learn.recorder.values.last().cloned().unwrap_or_default();
    // Only finite numbers: the model file's JSON has no NaN.
    let metrics = names.iter().cloned().zip(last.iter().copied()).filter(|(n, v)| n != "train_loss" && v.is_finite()).collect();
    let mut settings = settings(args, arch, lr, lr_find_batches, learn, ds.train.len(), epochs);
    settings.extend(args.recipe.settings(epochs, ds.multi_labels.is_some()));
    // The model file's outputs: the multi-label threshold, or the calibration temperature.
    let (error_rate, output, multi_label, mut extra, ev) = if ds.multi_labels.is_some() {
        let (m, output, extra) = interpret_valid_multi(learn, ds.valid.len(), thresh)?;
        settings.push(("final f1_score (samples) / accuracy_multi".into(), format!("{:.4} / {:.4}", m.f1_samples, m.accuracy_multi)));
        settings.push(("threshold".into(), output.thresh_source.clone().unwrap_or_default()));
        (f64::NAN, output, Some(m), extra, None)
    } else {
        let col = names.iter().position(|n| n == "error_rate").context("the learner records no error_rate")?;
        let error_rate = last.get(col).copied().unwrap_or(f64::NAN);
        (error_rate, OutputSpec::default(), None, Vec::new(), Some(recipe::evaluate(&args.recipe, learn, dls, out)?))
    };
    // The trained model first: a signal after training still leaves it on disk.
    let calibration = ev.as_ref().and_then(|e| e.calibration.clone());
    export_model(learn, args, arch, metrics, epochs, output, calibration, &out.join(MODEL_FILE))?;
    stop_if_interrupted(learn, lr, out)?;
    learn.recorder.plot_loss(&out.join("loss.png"))?;
    stop_if_interrupted(learn, lr, out)?;
    if let Some(ev) = &ev {
        extra.extend(interpret_valid(learn, &valid_items, out)?);
        extra.extend(ev.sections.iter().cloned());
        recipe::write_summary(out, fit_secs, epochs, recipe::SummaryEnd::Single { error_rate, ev })?;
        stop_if_interrupted(learn, lr, out)?;
    }
    if let Some(m) = &multi_label {
        recipe::write_summary(out, fit_secs, epochs, recipe::SummaryEnd::Multi(m))?;
    }
    write_run_report(&RunFiles { out: out.to_path_buf(), settings, error_rate, fit_secs, extra })?;
    let _ = std::fs::remove_file(learn.checkpoint_path(CHECKPOINT));
    let tta_error_rate = ev.as_ref().and_then(|e| e.tta_error_rate);
    Ok(FineTuneResult { out: out.to_path_buf(), error_rate, tta_error_rate, fit_secs, lr, multi_label, lr_find_batches, epoch_usage: vec![] })
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

/// A photo that cannot be loaded stops the fit (without `--skip-bad`), possibly after
/// epochs of training: the weights as of the last completed batch or epoch
/// ([`Learner::safe_position`]) go into the checkpoint, and the error says how to resume.
/// Any other error, or nothing safe to keep, is returned as it is.
fn keep_training_after_bad_item(learn: &Learner, e: anyhow::Error, lr: f64, out: &std::path::Path, epochs: usize) -> anyhow::Error {
    let (Some(bad), Some(pos)) = (e.downcast_ref::<crate::data::loader::ItemError>(), learn.safe_position) else { return e };
    let _guard = crate::callbacks::SavingGuard::new();
    match learn.save(CHECKPOINT, Some(pos)) {
        Ok(ckpt) => anyhow::anyhow!(
            "{e:#}\nthe training done so far is kept: checkpoint written to {}\nreplace or remove {} and resume with:\n  {}\n\
             (or add --skip-bad to that command to leave out the files that cannot be read)",
            ckpt.display(), bad.path.display(), resume_command(lr, out, if learn.phase == 1 { learn.n_epoch } else { epochs })
        ),
        Err(save) => e.context(format!("(the training done could not be kept: {save:#})")),
    }
}

/// After training, on SIGINT/SIGTERM: writes the checkpoint of the finished training (the
/// resumed run only redoes the outputs) and returns the error with the resume command.
fn stop_if_interrupted(learn: &Learner, lr: f64, out: &std::path::Path) -> crate::Result<()> {
    if !interrupt_requested() {
        return Ok(());
    }
    let _guard = crate::callbacks::SavingGuard::new();
    let ckpt = learn.save(CHECKPOINT, Some(learn.position_after_epoch()))?;
    Err(Interrupted(format!("interrupted after training: the model is saved in {}, the plots and report.html are not written; \
           checkpoint written to {}\nresume with:\n  {}", out.join(MODEL_FILE).display(), ckpt.display(),
           resume_command(lr, out, if learn.phase == 1 { learn.n_epoch } else { 0 }))).into())
}

/// Writes the self-contained model file (weights + architecture, vocabulary, inference
/// transforms and a training summary) that `kestrel predict` and `Predictor::load` read.
#[allow(clippy::too_many_arguments)]
fn export_model(
    learn: &Learner,
    args: &FineTuneArgs,
    arch: Arch,
    metrics: std::collections::BTreeMap<String, f64>,
    epochs: usize,
    output: OutputSpec,
    calibration: Option<crate::export::Calibration>,
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
        training: Some(TrainingSummary { epochs: args.freeze_epochs + epochs, metrics, date: utc_now_iso8601(),
                                         precision: Some(learn.precision.name().to_string()) }),
        output,
        calibration,
    };
    export(path, learn.model.as_ref(), &card)
}

/// fastai `ClassificationInterpretation` of the validation set: writes
/// confusion_matrix.png and top_losses.png and returns the report's most_confused table
/// and classification report.
fn interpret_valid(learn: &Learner, valid_items: &[PathBuf], out: &std::path::Path) -> crate::Result<Vec<Section>> {
    let preds = get_preds(learn.model.as_ref(), learn.dls.valid.as_ref())?;
    // Photos --skip-bad left out have no prediction.
    let skipped = learn.dls.valid.skipped_items();
    let items: Vec<PathBuf> = valid_items.iter().enumerate().filter(|(i, _)| skipped.binary_search(i).is_err()).map(|(_, p)| p.clone()).collect();
    let interp = ClassificationInterpretation::new(&preds, learn.dls.vocab.items().to_vec(), items)?;
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

fn settings(args: &FineTuneArgs, arch: Arch, lr: f64, lr_find_batches: usize, learn: &Learner, n_train: usize, unfrozen_epochs: usize) -> Vec<(String, String)> {
    let d = &args.data;
    let data = match (&d.csv, &d.folder) {
        (Some(c), _) => format!("{} ({})", c.display(), d.valid_col.as_deref().map_or("RandomSplitter".into(), |v| format!("split by column {v}"))),
        (None, Some(f)) => {
            let layout = d.layout().ok().flatten();
            let labels = match (&layout, d.label_from()) {
                (Some(FolderLayout::Split { .. } | FolderLayout::Classes { .. }), None) => "class folders".to_string(),
                _ => format!("labels: {}", d.label_re()),
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
    let precision = match (args.model.precision, learn.precision) {
        (PrecisionArg::Auto, p) => format!("{p} (--precision auto on {})", if crate::learner::fp16::cpu_has_native_bf16() { "a CPU with native bf16" } else { "this machine" }),
        (_, p) => p.to_string(),
    };
    let lr_find = if lr_find_batches > 0 { format!("{lr_find_batches} batches (lr_find.png)") } else { "not run (a fixed --lr; --lr auto or --lr-find sweeps and draws lr_find.png)".into() };
    [
        ("data", data),
        ("classes", learn.dls.vocab.len().to_string()),
        ("train / valid images", format!("{n_train} / {} ({} trained on per epoch: {} batches of {}, the last \
            incomplete batch dropped as fastai does)", learn.dls.valid.n_items(), learn.dls.train.n_items(),
            learn.dls.train.n_batches(), args.data.bs)),
        ("arch", format!("{arch}{}", if args.model.no_pretrained { " (random init)" } else { " (ImageNet pretrained)" })),
        ("presize", d.presize.to_string()),
        ("augmentation (aug_transforms)", args.aug.describe()),
        ("bs", match crate::distributed::group() {
            Some(g) => format!("{} per process × {} processes ({}) = global batch {}", d.bs, g.world(), g.backend().name(), d.bs * g.world()),
            None => d.bs.to_string(),
        }),
        ("sampling", if d.balance { "class-balanced (--balance: weights 1/class count, with replacement)".into() } else { "each training photo once per epoch, shuffled".into() }),
        ("fine_tune", format!("{unfrozen_epochs} epochs (+{} frozen), base_lr {lr:.2e}{}", args.freeze_epochs,
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

/// The command line of this process, quoted for a shell, with `kestrel` as its program.
fn plain_command() -> String {
    let mut cmd: Vec<String> = std::env::args().map(|a| shell_quote(&a)).collect();
    if cmd.first().is_some_and(|c| c.contains("kestrel")) { cmd[0] = "kestrel".into(); }
    cmd.join(" ")
}

/// The command line of this process with `--resume`, `--out` and the lr actually used. A
/// `--time` budget becomes `--epochs unfrozen_epochs` (the two exclude each other, and
/// `--resume` does not take `--time`): the unfrozen epochs the budget fitted, which set the
/// one-cycle schedule the checkpoint continues, or the caller's choice before they were fitted.
fn resume_command(lr: f64, out: &std::path::Path, unfrozen_epochs: usize) -> String {
    let mut args: Vec<String> = std::env::args().collect();
    let mut cmd: Vec<String> = Vec::new();
    let mut timed = false;
    let mut i = 0;
    while i < args.len() {
        let a = std::mem::take(&mut args[i]);
        match a.as_str() {
            "--lr" | "--out" => i += 1,
            "--time" => {
                timed = true;
                i += 1;
            }
            _ if a.starts_with("--time=") => timed = true,
            _ if a.starts_with("--lr=") || a.starts_with("--out=") || a == "--resume" => {}
            _ => cmd.push(shell_quote(&a)),
        }
        i += 1;
    }
    // cmd[0] stays the program as it was typed (a path when kestrel is not on PATH).
    let is_pets = cmd.get(1).is_some_and(|c| c == "pets");
    if !is_pets { cmd.push(format!("--lr {lr:e}")); }
    if timed { cmd.push(format!("--epochs {unfrozen_epochs}")); }
    cmd.push(format!("--out {}", shell_quote(&out.display().to_string())));
    cmd.push("--resume".into());
    cmd.join(" ")
}

/// `s` quoted for a POSIX shell when it holds anything beyond plain word characters.
pub(crate) fn shell_quote(s: &str) -> String {
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
