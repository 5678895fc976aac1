//! The [`Learner`] (fastai `learner.py`): model + data + loss + optimizer + metrics +
//! callbacks, and the training loop with fastai's events, `fit`, `fit_one_cycle`,
//! `fine_tune`, freezing and discriminative learning rates.

pub mod budget;
pub mod checkpoint;
pub mod fp16;
pub mod loss;
pub mod lr_find;
pub mod optim;
pub mod plot;
pub mod schedule;
mod training;
pub mod vision;

pub use budget::{TimeBudget, parse_duration};
pub use checkpoint::Position;
pub use fp16::{GradScaler, Precision};
pub use loss::{BCEWithLogitsLossFlat, CrossEntropyLossFlat, LabelSmoothingCrossEntropy, Loss};
pub use lr_find::{LrFindOptions, LrFindResult, Suggestion};
pub use optim::{Hypers, OptKind, OptParam, Optimizer};
pub use schedule::{Lr, OneCycle, Sched, combined_cos, even_mults};
pub use vision::{model_normalize, vision_aug_batch_tfms, vision_batch_tfms, vision_learner};

use crate::callbacks::{Callback, Recorder};
use crate::data::DataLoaders;
use crate::metrics::Metric;
use crate::models::Model;
use anyhow::Context;
use std::path::PathBuf;
use tch::Tensor;

/// What drives the learning rate during a fit.
#[derive(Debug, Clone)]
pub(crate) enum LrSchedule {
    /// Constant rates (plain `fit`).
    Constant,
    /// fastai's one-cycle policy.
    OneCycle(OneCycle),
    /// lr_find's exponential sweep over `num_it` iterations.
    Sweep { sched: Sched, num_it: usize, stop_div: bool, best: f64 },
}

/// Model, data, loss, optimizer, metrics and callbacks, and the state of the training loop
/// (fastai `Learner`). Callbacks receive `&mut Learner` and may read or change any public field.
///
/// Build with [`Learner::new`] then the `with_*` methods:
/// ```no_run
/// # fn demo(dls: kestrel::data::DataLoaders, model: Box<dyn kestrel::models::Model>) -> kestrel::Result<()> {
/// use kestrel::{learner::*, metrics::error_rate, callbacks::ProgressCallback};
/// let mut learn = Learner::new(dls, model, Box::new(CrossEntropyLossFlat))?
///     .with_metrics(vec![error_rate()])
///     .with_cb(Box::new(ProgressCallback::new()))
///     .with_seed(42);
/// learn.fine_tune(2, 2e-3)?;
/// # Ok(()) }
/// ```
pub struct Learner {
    /// Training and validation data.
    pub dls: DataLoaders,
    /// The network.
    pub model: Box<dyn Model>,
    /// The loss.
    pub loss_func: Box<dyn Loss>,
    /// The optimizer (fastai Adam by default), one group per model group.
    pub opt: Optimizer,
    /// Metrics computed on the validation set each epoch.
    pub metrics: Vec<Box<dyn Metric>>,
    /// User callbacks (run in `order`).
    pub cbs: Vec<Box<dyn Callback>>,
    /// Losses, learning rates, momentums and per-epoch values of the last fit.
    pub recorder: Recorder,
    /// Momentums of the one-cycle policy (fastai default (0.95, 0.85, 0.95)).
    pub moms: (f64, f64, f64),
    /// Weight decay applied at each fit; `None` keeps the optimizer's (Adam: 0.01).
    pub wd: Option<f64>,
    /// Seed of torch's generator for each training batch (dropout), derived from the
    /// position, so a seeded run and a resumed one draw the same numbers.
    pub seed: Option<u64>,
    /// Folder of `save`/`load` (fastai `path/model_dir`, default `models`).
    pub model_dir: PathBuf,
    /// Feed batches in channels-last memory layout (see [`Learner::to_channels_last`]).
    pub channels_last: bool,
    /// Dynamic loss scaling of fp16 training (see [`Learner::to_fp16`]).
    pub scaler: Option<GradScaler>,
    /// Precision of the forward pass (see [`Learner::to_fp16`], [`Learner::to_bf16`]).
    pub precision: Precision,

    /// Number of epochs of the current fit; a callback may change it during the fit (the
    /// schedule then follows the new length; see [`Learner::fine_tune_for`]).
    pub n_epoch: usize,
    /// Current epoch (0-based, within the current fit).
    pub epoch: usize,
    /// Batches in the current pass.
    pub n_iter: usize,
    /// Current batch index within the pass.
    pub iter: usize,
    /// Training batches done in the current fit.
    pub train_iter: usize,
    /// Fraction of the current fit's training done, in [0, 1] (fastai `pct_train`).
    pub pct_train: f64,
    /// True in the training phase of an epoch, false in validation.
    pub training: bool,
    /// Phase of a multi-fit call (fine_tune: 0 = frozen fit, 1 = unfrozen fit).
    pub phase: usize,
    /// Training passes over the data since the learner was made: the `epoch` argument of
    /// [`crate::data::BatchSource::batches`], so every pass has its own shuffle.
    pub train_pass: u64,
    /// Current inputs (N, C, H, W).
    pub xb: Option<Tensor>,
    /// Current targets.
    pub yb: Option<Tensor>,
    /// Current predictions (logits).
    pub pred: Option<Tensor>,
    /// Current loss with its graph; callbacks may replace it in `after_loss`.
    pub loss_grad: Option<Tensor>,
    /// Current loss value (detached).
    pub loss: f64,
    /// Debiased exponential moving average of the training loss (β = 0.98).
    pub smooth_loss: f64,
    /// Why the last fit stopped early (set by callbacks such as TerminateOnNaN).
    pub stop_reason: Option<String>,
    /// Where an interrupted run resumes (set by [`Learner::load_checkpoint`]).
    pub resume: Option<Position>,
    /// The clock of a timed run (set by its caller, e.g. the CLI around `fine_tune`): when
    /// it started in this process and the seconds it had taken before (a resumed
    /// checkpoint's [`Position::fit_secs`]). Checkpoints record the total, so that a resumed
    /// run reports its whole time.
    pub fit_clock: Option<(std::time::Instant, f64)>,
    /// The last position the weights match — after each training batch and each epoch,
    /// or the resumed one — where a checkpoint written after a failure (a photo that cannot
    /// be decoded, say) resumes; `None` before the first batch and after `lr_find`.
    pub safe_position: Option<Position>,
    /// Where the running fit resumed from (taken from `resume` by the fit of that phase),
    /// `None` for a fit that started afresh; callbacks read it in `before_fit`.
    pub resumed_at: Option<Position>,
    pub(crate) sched: LrSchedule,
    pub(crate) skip_batches: usize,
    /// The recorder saved with the checkpoint being resumed (see [`Learner::load`]).
    pub(crate) resume_recorder: Option<Recorder>,
}

impl Learner {
    /// A learner training `model` on `dls` with `loss_func` and fastai's Adam
    /// (lr 1e-3, mom 0.9, sqr_mom 0.99, eps 1e-5, wd 0.01, no wd on BatchNorm and bias).
    ///
    /// Errors: a parameter listed by `model.params()` is not in its `VarStore`, or the
    /// model reports no group.
    pub fn new(dls: DataLoaders, model: Box<dyn Model>, loss_func: Box<dyn Loss>) -> crate::Result<Self> {
        let opt = make_opt(model.as_ref(), OptKind::Adam)?;
        Ok(Learner {
            dls, model, loss_func, opt, metrics: vec![], cbs: vec![], recorder: Recorder::default(),
            moms: (0.95, 0.85, 0.95), wd: None, seed: None, model_dir: PathBuf::from("models"),
            channels_last: false, scaler: None, precision: Precision::Fp32,
            n_epoch: 0, epoch: 0, n_iter: 0, iter: 0, train_iter: 0, pct_train: 0.0, training: false,
            phase: 0, train_pass: 0, xb: None, yb: None, pred: None, loss_grad: None, loss: f64::NAN,
            smooth_loss: f64::NAN, stop_reason: None, resume: None, resumed_at: None, fit_clock: None, safe_position: None, sched: LrSchedule::Constant, skip_batches: 0,
            resume_recorder: None,
        })
    }

    /// Sets the metrics.
    pub fn with_metrics(mut self, metrics: Vec<Box<dyn Metric>>) -> Self { self.metrics = metrics; self }
    /// Adds a callback.
    pub fn with_cb(mut self, cb: Box<dyn Callback>) -> Self { self.cbs.push(cb); self }
    /// Seeds torch's generator per training batch (see [`Learner::seed`]).
    pub fn with_seed(mut self, seed: u64) -> Self { self.seed = Some(seed); self }
    /// Sets the weight decay used by every fit (fastai `Learner(wd=…)`).
    pub fn with_wd(mut self, wd: f64) -> Self { self.wd = Some(wd); self }
    /// Sets the folder of `save`/`load`.
    pub fn with_model_dir(mut self, dir: impl Into<PathBuf>) -> Self { self.model_dir = dir.into(); self }
    /// Replaces the optimizer by a fresh one of `kind` (fastai `opt_func`): Adam or SGD
    /// (SGD: mom 0.9 when used with one-cycle's momentum schedule, wd 0).
    ///
    /// Errors: as [`Learner::new`].
    pub fn with_opt(mut self, kind: OptKind) -> crate::Result<Self> {
        let frozen = self.opt.frozen_idx;
        self.opt = make_opt(self.model.as_ref(), kind)?;
        self.opt.freeze_to(frozen as isize);
        Ok(self)
    }

    /// fastai `freeze_to(n)`: parameter groups before `n` are frozen (BatchNorm parameters
    /// stay trainable, fastai `train_bn=True`); negative `n` counts from the end.
    pub fn freeze_to(&mut self, n: isize) { self.opt.freeze_to(n); }
    /// fastai `freeze()`: train only the last group (the head) and the BatchNorm layers.
    pub fn freeze(&mut self) { self.opt.freeze_to(-1); }
    /// fastai `unfreeze()`: train every group.
    pub fn unfreeze(&mut self) { self.opt.freeze_to(0); }

    /// Starts [`Self::fit_clock`] now, continuing a resumed checkpoint's time (the
    /// [`Self::resume`] position's `fit_secs`, else 0).
    pub fn start_fit_clock(&mut self) {
        self.fit_clock = Some((std::time::Instant::now(), self.resume.map_or(0.0, |p| p.fit_secs)));
    }

    /// Seconds of the timed run so far, over every process that ran it (see
    /// [`Self::fit_clock`]); 0 when no clock was started.
    pub fn fit_secs(&self) -> f64 { self.fit_clock.map_or(0.0, |(t0, before)| before + t0.elapsed().as_secs_f64()) }

    /// fastai `fit(n_epoch, lr)`: `n_epoch` epochs at constant learning rate(s) `lr`
    /// (scalar or slice over the groups), momentum and weight decay as the optimizer has them.
    ///
    /// Errors: a data, model or callback error (cancellations are not errors).
    pub fn fit(&mut self, n_epoch: usize, lr: impl Into<Lr>) -> crate::Result<()> {
        let lrs = lr.into().per_group(self.opt.groups.len());
        self.opt.set_lrs(&lrs);
        self.sched = LrSchedule::Constant;
        self.phase = 0;
        self.run_fit(n_epoch, None)
    }

    /// fastai `fit_one_cycle(n_epoch, lr_max, div=25, div_final=1e5, pct_start=0.25)`:
    /// per batch, lr follows `combined_cos(pct_start, lr_max/div, lr_max, lr_max/div_final)`
    /// in every group and momentum `combined_cos(pct_start, *moms)`.
    ///
    /// Errors: as [`Learner::fit`].
    pub fn fit_one_cycle(&mut self, n_epoch: usize, lr_max: impl Into<Lr>) -> crate::Result<()> {
        self.fit_one_cycle_with(n_epoch, lr_max.into(), OneCycleOptions::default())
    }

    /// [`Learner::fit_one_cycle`] with all of fastai's options.
    ///
    /// Errors: as [`Learner::fit`].
    pub fn fit_one_cycle_with(&mut self, n_epoch: usize, lr_max: Lr, o: OneCycleOptions) -> crate::Result<()> {
        self.phase = 0;
        self.one_cycle_phase(n_epoch, lr_max, o)
    }

    fn one_cycle_phase(&mut self, n_epoch: usize, lr_max: Lr, o: OneCycleOptions) -> crate::Result<()> {
        let lrs = lr_max.per_group(self.opt.groups.len());
        self.opt.set_lrs(&lrs);
        let moms = o.moms.unwrap_or(self.moms);
        self.sched = LrSchedule::OneCycle(OneCycle::new(&lrs, o.div, o.div_final, o.pct_start, moms));
        self.run_fit(n_epoch, o.wd)
    }

    /// fastai `fine_tune(epochs, base_lr=2e-3, freeze_epochs=1, lr_mult=100, pct_start=0.3,
    /// div=5)`: freeze; one-cycle `freeze_epochs` with `slice(base_lr)` and pct_start 0.99;
    /// halve `base_lr`; unfreeze; one-cycle `epochs` with `slice(base_lr/lr_mult, base_lr)`.
    /// Unlike fastai, when a callback stopped the frozen phase with a
    /// [`Learner::stop_reason`] (NaN loss, early stopping), the unfrozen phase is skipped,
    /// and so it is with `epochs` = 0 (fastai would still unfreeze and run an empty fit that
    /// clears the recorder, losing the frozen phase's table).
    ///
    /// Errors: as [`Learner::fit`].
    pub fn fine_tune(&mut self, epochs: usize, base_lr: f64) -> crate::Result<()> {
        self.fine_tune_with(epochs, base_lr, FineTuneOptions::default())
    }

    /// [`Learner::fine_tune`] with all of fastai's options.
    ///
    /// Errors: as [`Learner::fit`].
    pub fn fine_tune_with(&mut self, epochs: usize, base_lr: f64, o: FineTuneOptions) -> crate::Result<()> {
        self.freeze();
        self.phase = 0;
        let first = OneCycleOptions { pct_start: 0.99, wd: o.wd, moms: o.moms, ..OneCycleOptions::default() };
        self.one_cycle_phase(o.freeze_epochs, Lr::SliceHi(base_lr), first)?;
        if self.stop_reason.is_some() || epochs == 0 { return Ok(()); }
        let base_lr = base_lr / 2.0;
        self.unfreeze();
        self.phase = 1;
        let second = OneCycleOptions { pct_start: o.pct_start, div: o.div, wd: o.wd, moms: o.moms, ..OneCycleOptions::default() };
        self.one_cycle_phase(epochs, Lr::Slice(base_lr / o.lr_mult, base_lr), second)
    }

    /// Average loss and metric values over the validation set, in the order
    /// `[valid_loss, metrics…]` (fastai `validate`).
    ///
    /// Errors: a data error.
    pub fn validate(&mut self) -> crate::Result<Vec<f64>> {
        self.run_validation()
    }

    /// Names of the recorded columns: `train_loss`, `valid_loss`, then each metric's.
    pub fn metric_names(&self) -> Vec<String> {
        let mut v = vec!["train_loss".to_string(), "valid_loss".to_string()];
        v.extend(self.metrics.iter().map(|m| m.name()));
        v
    }

    /// A copy of every model variable (parameters and buffers), by name.
    pub fn model_state(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> =
            self.model.var_store().variables().into_iter().map(|(k, t)| (k, t.detach().copy())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Copies `state` (as returned by [`Learner::model_state`]) into the model's variables.
    ///
    /// Errors: a variable is missing or has another shape.
    pub fn set_model_state(&mut self, state: &[(String, Tensor)]) -> crate::Result<()> {
        let vars = self.model.var_store().variables();
        tch::no_grad(|| -> crate::Result<()> {
            for (k, t) in state {
                let mut v = vars.get(k).with_context(|| format!("model has no variable {k}"))?.shallow_clone();
                anyhow::ensure!(v.size() == t.size(), "variable {k}: shape {:?} in the state, {:?} in the model", t.size(), v.size());
                v.copy_(t);
            }
            Ok(())
        })
    }
}

/// Options of [`Learner::fit_one_cycle_with`], fastai's defaults.
#[derive(Debug, Clone, Copy)]
pub struct OneCycleOptions {
    /// Start lr = lr_max / div (25).
    pub div: f64,
    /// Final lr = lr_max / div_final (1e5).
    pub div_final: f64,
    /// Fraction of the iterations spent warming up (0.25).
    pub pct_start: f64,
    /// Weight decay (None: the learner's, else the optimizer's).
    pub wd: Option<f64>,
    /// Momentums (start, middle, end); None: the learner's (0.95, 0.85, 0.95).
    pub moms: Option<(f64, f64, f64)>,
}

impl Default for OneCycleOptions {
    fn default() -> Self { OneCycleOptions { div: 25.0, div_final: 1e5, pct_start: 0.25, wd: None, moms: None } }
}

/// Options of [`Learner::fine_tune_with`], fastai's defaults.
#[derive(Debug, Clone, Copy)]
pub struct FineTuneOptions {
    /// Epochs with the body frozen (1).
    pub freeze_epochs: usize,
    /// Ratio of the head's to the first group's lr in the unfrozen phase (100).
    pub lr_mult: f64,
    /// pct_start of the unfrozen phase (0.3).
    pub pct_start: f64,
    /// div of the unfrozen phase (5).
    pub div: f64,
    /// Weight decay (None: the learner's, else the optimizer's).
    pub wd: Option<f64>,
    /// Momentums; None: the learner's.
    pub moms: Option<(f64, f64, f64)>,
}

impl Default for FineTuneOptions {
    fn default() -> Self { FineTuneOptions { freeze_epochs: 1, lr_mult: 100.0, pct_start: 0.3, div: 5.0, wd: None, moms: None } }
}

/// The optimizer over `model`'s groups: BatchNorm and bias parameters get no weight decay
/// (fastai `wd_bn_bias=False`), BatchNorm parameters are `force_train` (fastai `train_bn`).
fn make_opt(model: &dyn Model, kind: OptKind) -> crate::Result<Optimizer> {
    let vars = model.var_store().variables();
    let n = model.n_groups();
    anyhow::ensure!(n > 0, "the model reports no parameter group");
    let mut groups: Vec<Vec<OptParam>> = (0..n).map(|_| Vec::new()).collect();
    for p in model.params() {
        let t = vars.get(&p.name).with_context(|| format!("model lists parameter {} but its VarStore has no such variable", p.name))?;
        anyhow::ensure!(p.group < n, "parameter {} is in group {}, but the model has {n} groups", p.name, p.group);
        groups[p.group].push(OptParam {
            name: p.name.clone(), tensor: t.shallow_clone(), do_wd: !(p.is_bn || p.is_bias),
            force_train: p.is_bn, grad_avg: None, sqr_avg: None, step: 0,
        });
    }
    let base = match kind { OptKind::Adam => Hypers::adam(1e-3), OptKind::Sgd => Hypers::sgd(1e-3) };
    Optimizer::new(kind, groups, base)
}

impl Learner {
    /// True while a one-cycle schedule drives the current fit.
    pub fn is_one_cycle(&self) -> bool { matches!(self.sched, LrSchedule::OneCycle(_)) }
}
