//! The training-recipe options of `kestrel fine-tune` (label smoothing, MixUp, CutMix, an
//! EMA of the weights, TTA at validation, a time budget, weight decay, the ratio of the
//! discriminative learning rates) and what the run measures after training: the error
//! with test-time augmentation, temperature scaling with the ECE before and after
//! (reliability.png) and `summary.json`.

use crate::callbacks::{EmaCallback, MixHandler};
use crate::data::ImageDataLoaders;
use crate::export::Calibration;
use crate::interpret::calibration::{calibrate, plot_reliability};
use crate::interpret::{get_preds, tta};
use crate::learner::{FineTuneOptions, LabelSmoothingCrossEntropy, Learner, parse_duration};
use crate::report::Section;
use anyhow::Context;
use clap::Args;
use std::path::Path;

/// File name of the reliability diagram in `--out`.
pub const RELIABILITY_PNG: &str = "reliability.png";
/// File name of the machine-readable summary of a run in `--out`.
pub const SUMMARY_JSON: &str = "summary.json";

/// The recipe options of `kestrel fine-tune` (flattened into its arguments). Every
/// option but `--tta` and the calibration is off by default, as in fastai's `fine_tune`.
#[derive(Args, Debug, Clone)]
pub struct RecipeOpts {
    /// Label smoothing (fastai `loss_func=LabelSmoothingCrossEntropyFlat(eps)`): the
    /// targets get weight 1 − EPS, the rest spread evenly over the classes. EPS defaults
    /// to fastai's 0.1 when the flag is given without a value.
    #[arg(long, value_name = "EPS", num_args = 0..=1, default_missing_value = "0.1")]
    pub label_smoothing: Option<f64>,
    /// MixUp (fastai `cbs=MixUp(alpha)`): each training image blended with another one,
    /// λ ~ Beta(ALPHA, ALPHA), the loss blended alike. ALPHA defaults to fastai's 0.4.
    #[arg(long, value_name = "ALPHA", num_args = 0..=1, default_missing_value = "0.4", conflicts_with = "cutmix")]
    pub mixup: Option<f64>,
    /// CutMix (fastai `cbs=CutMix(alpha)`): a box of another training image pasted in, the
    /// loss blended by the box's area. ALPHA defaults to fastai's 1.0.
    #[arg(long, value_name = "ALPHA", num_args = 0..=1, default_missing_value = "1.0")]
    pub cutmix: Option<f64>,
    /// Exponential moving average of the weights, validated and exported in place of the
    /// trained ones: after each step ema ← d·ema + (1 − d)·w, d = min(DECAY, (1+n)/(10+n))
    /// after n steps. DECAY defaults to 0.999.
    #[arg(long, value_name = "DECAY", num_args = 0..=1, default_missing_value = "0.999")]
    pub ema: Option<f64>,
    /// After training, also measure the validation error with test-time augmentation
    /// (fastai `learn.tta(n=4, beta=0.25)`); `kestrel predict --tta` predicts the same way.
    /// On by default for single-label data (kestrel's measured recipe, README "Training
    /// recipe"; fastai runs `tta` only when called): 4 more passes over the validation
    /// set. `--tta false` skips it; multi-label data has no TTA.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tta: Option<bool>,
    /// Train for this long instead of `--epochs` (Ultralytics `time`): 60s, 5m, 1.5h, 1h30m. The
    /// frozen epochs run first; the unfrozen epochs (and their one-cycle schedule) are fitted
    /// to what is left, from the measured epoch time. Validation counts; lr_find does not.
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["resume", "epochs"])]
    pub time: Option<String>,
    /// Weight decay of every fit (fastai `wd`; default the optimizer's, 0.01 for Adam).
    #[arg(long, value_name = "WD")]
    pub wd: Option<f64>,
    /// Ratio of the head's to the first layer group's learning rate in the unfrozen phase
    /// (fastai `fine_tune(lr_mult=100)`: `slice(base_lr/lr_mult, base_lr)`).
    #[arg(long, value_name = "RATIO", default_value_t = 100.0)]
    pub lr_mult: f64,
    /// Do not fit a temperature on the validation set (the exported model then gives the
    /// plain softmax). By default the temperature is fitted, stored in the model file and
    /// applied by `kestrel predict`.
    #[arg(long)]
    pub no_calibrate: bool,
}

impl RecipeOpts {
    /// Whether TTA runs: as asked, else on for single-label data (`multi_label` false).
    pub fn tta(&self, multi_label: bool) -> bool { self.tta.unwrap_or(!multi_label) }

    /// Checks the values. Errors: an option out of its range, naming it.
    pub fn validate(&self) -> crate::Result<()> {
        let open01 = |v: f64| v > 0.0 && v < 1.0;
        if let Some(e) = self.label_smoothing { anyhow::ensure!(open01(e), "--label-smoothing {e}: expected a value in (0, 1), such as 0.1"); }
        if let Some(a) = self.mixup { anyhow::ensure!(a > 0.0 && a.is_finite(), "--mixup {a}: alpha must be a positive number, such as 0.4"); }
        if let Some(a) = self.cutmix { anyhow::ensure!(a > 0.0 && a.is_finite(), "--cutmix {a}: alpha must be a positive number, such as 1.0"); }
        if let Some(d) = self.ema { anyhow::ensure!(open01(d), "--ema {d}: expected a decay in (0, 1), such as 0.999"); }
        if let Some(w) = self.wd { anyhow::ensure!(w >= 0.0 && w.is_finite(), "--wd {w}: expected a non-negative number"); }
        anyhow::ensure!(self.lr_mult >= 1.0 && self.lr_mult.is_finite(), "--lr-mult {}: expected a number ≥ 1", self.lr_mult);
        if let Some(t) = &self.time { parse_duration(t).with_context(|| format!("--time {t}"))?; }
        Ok(())
    }

    /// The learner with the recipe's loss, weight decay and callbacks (MixUp/CutMix, EMA).
    pub fn configure(&self, learn: Learner) -> Learner {
        let mut learn = learn;
        if let Some(eps) = self.label_smoothing { learn.loss_func = Box::new(LabelSmoothingCrossEntropy { eps }); }
        if let Some(wd) = self.wd { learn = learn.with_wd(wd); }
        if let Some(a) = self.mixup { learn = learn.with_cb(Box::new(MixHandler::mixup(a))); }
        if let Some(a) = self.cutmix { learn = learn.with_cb(Box::new(MixHandler::cutmix(a))); }
        if let Some(d) = self.ema { learn = learn.with_cb(Box::new(EmaCallback::new(d))); }
        learn
    }

    /// fastai `fine_tune`'s options with the recipe's `lr_mult`.
    pub fn fine_tune_options(&self, freeze_epochs: usize) -> FineTuneOptions {
        FineTuneOptions { freeze_epochs, lr_mult: self.lr_mult, ..FineTuneOptions::default() }
    }

    /// Runs `fine_tune`: `epochs` unfrozen epochs, or as many as fit in `--time`.
    /// Returns the number of unfrozen epochs run.
    ///
    /// Errors: as [`Learner::fine_tune_with`]; a bad `--time`.
    pub fn fine_tune(&self, learn: &mut Learner, epochs: usize, lr: f64, o: FineTuneOptions) -> crate::Result<usize> {
        match &self.time {
            Some(t) => learn.fine_tune_for(parse_duration(t)?, lr, o),
            None => learn.fine_tune_with(epochs, lr, o).map(|_| epochs),
        }
    }

    /// The recipe's lines of the report's settings table; the loss is fastai's
    /// `BCEWithLogitsLossFlat` for multi-label data.
    pub fn settings(&self, unfrozen_epochs: usize, multi_label: bool) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let opt = |o: Option<f64>| o.map_or("off".to_string(), |x| x.to_string());
        let loss = match (multi_label, self.label_smoothing) {
            (true, _) => "BCEWithLogitsLossFlat".to_string(),
            (false, Some(e)) => format!("LabelSmoothingCrossEntropyFlat(eps={e})"),
            (false, None) => "CrossEntropyLossFlat".to_string(),
        };
        v.push(("loss".to_string(), loss));
        v.push(("MixUp / CutMix alpha".to_string(), format!("{} / {}", opt(self.mixup), opt(self.cutmix))));
        v.push(("EMA decay".to_string(), opt(self.ema)));
        v.push(("wd / lr_mult".to_string(), format!("{} / {}", self.wd.map_or("0.01 (Adam default)".into(), |w| w.to_string()), self.lr_mult)));
        if let Some(t) = &self.time { v.push(("time budget".to_string(), format!("{t}: {unfrozen_epochs} unfrozen epochs fitted"))); }
        v
    }
}

/// What [`evaluate`] measured after training.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// The fitted temperature and ECE/NLL before and after (None with `--no-calibrate`).
    pub calibration: Option<Calibration>,
    /// Validation error rate with test-time augmentation (None without `--tta`).
    pub tta_error_rate: Option<f64>,
    /// Report sections (calibration table, reliability diagram).
    pub sections: Vec<Section>,
}

/// After training: predictions on the validation set, the temperature fitted on them with
/// the ECE before and after and the reliability diagram (`reliability.png` in `out`), and
/// the error with TTA when `--tta`.
///
/// Errors: a data or model error; the PNG cannot be written.
pub fn evaluate(opts: &RecipeOpts, learn: &Learner, dls: &ImageDataLoaders, out: &Path) -> crate::Result<Evaluation> {
    let mut ev = Evaluation::default();
    if opts.tta(false) {
        let aug = dls.valid.augmented_like(&dls.train)?;
        let (probs, targets) = tta(learn.model.as_ref(), dls.valid.as_ref(), &aug, &Default::default())?;
        let wrong = probs.argmax(-1, false).ne_tensor(&targets).to_kind(tch::Kind::Double).mean(tch::Kind::Double);
        ev.tta_error_rate = Some(wrong.double_value(&[]));
    }
    if !opts.no_calibrate {
        let preds = get_preds(learn.model.as_ref(), dls.valid.as_ref())?;
        let r = calibrate(&preds.probs, &preds.targets)?;
        let png = out.join(RELIABILITY_PNG);
        plot_reliability(&r, &png)?;
        let c = &r.calibration;
        let f = |v: f64| format!("{v:.4}");
        ev.sections.push(Section::Table {
            title: format!("Calibration: temperature scaling (Guo et al. 2017) fitted on the {} validation items, T = {:.3}{}", c.n_fitted, c.temperature,
                           if c.temperature == 1.0 { " (the NLL has no minimum inside T ∈ [0.05, 20], as when every validation photo is right: the softmax is kept)" } else { "" }),
            header: vec!["".into(), "ECE (15 bins)".into(), "NLL".into()],
            rows: vec![
                vec!["softmax".into(), f(c.ece_before), f(c.nll_before)],
                vec!["temperature-scaled, fitted and measured on the same items".into(), f(c.ece_after), f(c.nll_after)],
                vec!["temperature-scaled, 2-fold cross-fitted (T from the other half)".into(), f(c.ece_after_crossfit), f(c.nll_after_crossfit)],
            ],
        });
        let png_bytes = std::fs::read(&png).with_context(|| format!("cannot read {}", png.display()))?;
        ev.sections.push(Section::Image { title: "Reliability diagram (accuracy against confidence per bin)".into(), png: png_bytes });
        ev.calibration = Some(r.calibration);
    }
    if let Some(e) = ev.tta_error_rate {
        ev.sections.insert(0, Section::Text { title: "Test-time augmentation".into(),
            body: format!("validation error_rate with TTA (fastai tta(n=4, beta=0.25)): {e:.4}") });
    }
    Ok(ev)
}

/// Writes `summary.json` in `out`: `fit_secs`, `unfrozen_epochs` and the final numbers —
/// for single-label data `error_rate`, `error_rate_tta` and `calibration` (the
/// [`Calibration`] fields; what `scripts/bench/recipe_cv.sh` reads), for multi-label data
/// `multi_label` ([`MultiLabelOutcome`](super::fine_tune::MultiLabelOutcome): `thresh`,
/// `tuned`, `f1_samples`, `accuracy_multi`).
///
/// Errors: the file cannot be written.
pub fn write_summary(out: &Path, fit_secs: f64, unfrozen_epochs: usize, end: SummaryEnd<'_>) -> crate::Result<()> {
    let mut j = serde_json::json!({ "fit_secs": fit_secs, "unfrozen_epochs": unfrozen_epochs });
    match end {
        SummaryEnd::Single { error_rate, ev } => {
            j["error_rate"] = error_rate.into();
            j["error_rate_tta"] = serde_json::to_value(ev.tta_error_rate)?;
            j["calibration"] = serde_json::to_value(&ev.calibration)?;
        }
        SummaryEnd::Multi(m) => {
            j["multi_label"] = serde_json::json!({ "thresh": m.thresh, "tuned": m.tuned, "f1_samples": m.f1_samples,
                                                   "accuracy_multi": m.accuracy_multi });
        }
    }
    crate::util::atomic::write_atomic(&out.join(SUMMARY_JSON), serde_json::to_string_pretty(&j)?.as_bytes())
}

/// How a run ended, for [`write_summary`].
pub enum SummaryEnd<'a> {
    /// Single-label: the final error rate and the evaluation after training.
    Single {
        /// The last epoch's validation error rate, in [0, 1].
        error_rate: f64,
        /// TTA and calibration after training ([`evaluate`]).
        ev: &'a Evaluation,
    },
    /// Multi-label: the threshold and the scores at it.
    Multi(&'a super::fine_tune::MultiLabelOutcome),
}
