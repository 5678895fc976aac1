//! The training recipe: ECE against a hand-computed case, temperature scaling on a
//! synthetic over-confident model, MixUp / CutMix / label smoothing against fastai 2.8.12's
//! callbacks (fixture from scripts/ref/recipe_fixture.py), the EMA of the weights, and
//! `fine_tune_for` ending within its time budget.

mod torch_rng;
use torch_rng::torch_rng;

use kestrel::callbacks::{Callback, EmaCallback, MixHandler, cutmix_inputs, mix_loss, mixup_inputs, rand_bbox, sample_beta};
use kestrel::data::{CategoryMap, DataLoaders, TensorLoader};
use kestrel::interpret::calibration::{self, ECE_BINS, apply_temperature, ece, fit_temperature, nll, reliability};
use kestrel::learner::*;
use kestrel::models::SimpleCnn;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> Value {
    let p = format!("{}/tests/fixtures/learner/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// A float tensor of any nesting of JSON arrays.
fn tensor(v: &Value) -> Tensor {
    fn shape(v: &Value, s: &mut Vec<i64>) {
        if let Some(a) = v.as_array() {
            s.push(a.len() as i64);
            shape(&a[0], s);
        }
    }
    fn flat(v: &Value, out: &mut Vec<f32>) {
        match v.as_array() {
            Some(a) => a.iter().for_each(|x| flat(x, out)),
            None => out.push(v.as_f64().unwrap() as f32),
        }
    }
    let (mut s, mut f) = (vec![], vec![]);
    shape(v, &mut s);
    flat(v, &mut f);
    Tensor::from_slice(&f).view(s.as_slice())
}

fn ints(v: &Value) -> Tensor {
    Tensor::from_slice(&v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

// ---------------------------------------------------------------- calibration

/// Four predictions, three classes, confidences chosen away from bin edges:
/// bin 13 (0.867, 0.933]: 0.9 right and 0.9 wrong → |0.5 − 0.9| · 2/4 = 0.2;
/// bin 10 (0.667, 0.733]: 0.7 right → 0.3 · 1/4 = 0.075;
/// bin 6 (0.4, 0.467]: 0.45 wrong → 0.45 · 1/4 = 0.1125. ECE = 0.3875.
#[test]
fn ece_matches_a_hand_computed_case() {
    let probs = Tensor::from_slice(&[0.9f32, 0.05, 0.05, 0.05, 0.9, 0.05, 0.7, 0.2, 0.1, 0.25, 0.45, 0.3]).view([4, 3]);
    let y = Tensor::from_slice(&[0i64, 0, 0, 2]);
    let e = ece(&probs, &y, ECE_BINS).unwrap();
    assert!((e - 0.3875).abs() < 1e-6, "ECE {e}");
    let bins = reliability(&probs, &y, ECE_BINS).unwrap();
    assert_eq!(bins.len(), 15);
    let nonempty: Vec<(usize, usize)> = bins.iter().enumerate().filter(|(_, b)| b.count > 0).map(|(i, b)| (i, b.count)).collect();
    assert_eq!(nonempty, [(6, 1), (10, 1), (13, 2)]);
    assert!((bins[13].accuracy - 0.5).abs() < 1e-12 && (bins[13].confidence - 0.9).abs() < 1e-6);
    assert!((bins[13].lo - 13.0 / 15.0).abs() < 1e-12 && (bins[13].hi - 14.0 / 15.0).abs() < 1e-12);
    // NLL by hand: −(ln 0.9 + ln 0.05 + ln 0.7 + ln 0.3)/4.
    let want = -((0.9f64).ln() + (0.05f64).ln() + (0.7f64).ln() + (0.3f64).ln()) / 4.0;
    assert!((nll(&probs, &y).unwrap() - want).abs() < 1e-6);
    // Bad input is an error naming the problem, not a panic.
    let err = ece(&probs, &Tensor::from_slice(&[0i64, 0, 0, 3]), 15).unwrap_err().to_string();
    assert!(err.contains("target 3"), "{err}");
    assert!(ece(&probs, &Tensor::from_slice(&[0i64, 0]), 15).is_err());
}

/// A calibrated "true" model (labels drawn from softmax(z)) reported 3× over-confident
/// (logits 3z): the temperature fitted on one half is about 3 and lowers the NLL and the
/// ECE on the other half; the cross-fitted numbers of `calibrate` agree.
#[test]
fn temperature_fitted_on_one_half_calibrates_the_other() {
    let _rng = torch_rng();
    tch::manual_seed(5);
    let (n, c) = (4000i64, 10i64);
    let z = Tensor::randn([n, c], (Kind::Float, Device::Cpu)) * 1.5;
    let y = z.softmax(-1, Kind::Float).multinomial(1, true).squeeze_dim(1);
    let logits = &z * 3.0;
    let (fit_l, test_l) = (logits.narrow(0, 0, n / 2), logits.narrow(0, n / 2, n / 2));
    let (fit_y, test_y) = (y.narrow(0, 0, n / 2), y.narrow(0, n / 2, n / 2));
    let t = fit_temperature(&fit_l, &fit_y).unwrap();
    assert!((t - 3.0).abs() < 0.3, "fitted T {t}, the over-confidence is 3");
    let before = test_l.softmax(-1, Kind::Float);
    let after = apply_temperature(&test_l, t);
    let (nb, na) = (nll(&before, &test_y).unwrap(), nll(&after, &test_y).unwrap());
    let (eb, ea) = (ece(&before, &test_y, ECE_BINS).unwrap(), ece(&after, &test_y, ECE_BINS).unwrap());
    assert!(na < nb * 0.8, "held-out NLL {nb} → {na}");
    assert!(ea < eb / 3.0 && ea < 0.04, "held-out ECE {eb} → {ea}");
    // Scaling never changes the predicted class.
    assert!(before.argmax(-1, false).equal(&after.argmax(-1, false)));
    // From probabilities (log-probabilities are logits up to a per-row constant): the same T.
    let t2 = fit_temperature(&calibration::logits_from_probs(&logits.softmax(-1, Kind::Float).narrow(0, 0, n / 2)), &fit_y).unwrap();
    assert!((t2 - t).abs() < 1e-3, "{t2} vs {t}");
    let r = calibration::calibrate(&logits.softmax(-1, Kind::Float), &y).unwrap().calibration;
    assert!(r.ece_after_crossfit < r.ece_before / 3.0 && r.nll_after_crossfit < r.nll_before, "{r:?}");
    assert!(r.nll_after <= r.nll_after_crossfit + 1e-9, "in-sample NLL is the optimum: {r:?}");
    // An already calibrated model keeps T ≈ 1.
    let t1 = fit_temperature(&z, &y).unwrap();
    assert!((t1 - 1.0).abs() < 0.1, "T {t1}");
    // Every item right: the NLL falls all the way to T_MIN, so calibrate keeps T = 1 (a
    // model scaled by 0.05 would give any photo, of any class or none, probability 1).
    let right = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 0, 1]);
    let probs = (right.one_hot(3).to_kind(Kind::Float) * 2.0 + 1.0).softmax(-1, Kind::Float);
    assert!(fit_temperature(&calibration::logits_from_probs(&probs), &right).unwrap() <= calibration::T_MIN * 1.001);
    let r = calibration::calibrate(&probs, &right).unwrap().calibration;
    assert_eq!(r.temperature, 1.0, "{r:?}");
    assert!((r.nll_after - r.nll_before).abs() < 1e-6 && (r.nll_after_crossfit - r.nll_before).abs() < 1e-6, "{r:?}");
}

// ---------------------------------------------------------------- MixUp, CutMix, label smoothing

#[test]
fn mixup_and_cutmix_match_fastai() {
    let f = fixture("mixup.json");
    let (x, y, logits) = (tensor(&f["x"]), ints(&f["y"]), tensor(&f["logits"]));
    let loss_of = |name: &str| -> Box<dyn Loss> {
        match name { "ce" => Box::new(CrossEntropyLossFlat), _ => Box::new(LabelSmoothingCrossEntropy::default()) }
    };
    for m in f["mixup"].as_array().unwrap() {
        let (perm, lam) = (ints(&m["perm"]), tensor(&m["lam"]));
        let mixed = mixup_inputs(&x, &x.index_select(0, &perm), &lam);
        assert!(max_diff(&mixed, &tensor(&m["mixed_x"])) < 1e-6, "MixUp inputs, seed {}", m["seed"]);
        let loss = mix_loss(loss_of(m["loss_func"].as_str().unwrap()).as_ref(), &logits, &y, &y.index_select(0, &perm), &lam).unwrap();
        let want = m["loss"].as_f64().unwrap();
        assert!((loss.double_value(&[]) - want).abs() < 1e-6, "MixUp {} loss {} vs fastai {want}", m["loss_func"], loss.double_value(&[]));
    }
    for m in f["cutmix"].as_array().unwrap() {
        let perm = ints(&m["perm"]);
        let (h, w) = (x.size()[2], x.size()[3]);
        let bbox = rand_bbox(w, h, m["beta"].as_f64().unwrap() as f32, m["cx"].as_i64().unwrap(), m["cy"].as_i64().unwrap());
        let (mixed, lam) = cutmix_inputs(&x, &x.index_select(0, &perm), bbox);
        assert!(max_diff(&mixed, &tensor(&m["mixed_x"])) < 1e-7, "CutMix inputs, seed {}", m["seed"]);
        assert!((lam - m["lam"].as_f64().unwrap()).abs() < 1e-6, "CutMix lambda {lam}");
        let lam_t = Tensor::from(lam as f32);
        let loss = mix_loss(loss_of(m["loss_func"].as_str().unwrap()).as_ref(), &logits, &y, &y.index_select(0, &perm), &lam_t).unwrap();
        let want = m["loss"].as_f64().unwrap();
        assert!((loss.double_value(&[]) - want).abs() < 1e-6, "CutMix {} loss {} vs fastai {want}", m["loss_func"], loss.double_value(&[]));
    }
    for b in f["rand_bbox"].as_array().unwrap() {
        let g = |k: &str| b[k].as_i64().unwrap();
        let got = rand_bbox(g("w"), g("h"), b["lam"].as_f64().unwrap() as f32, g("cx"), g("cy"));
        let want: Vec<i64> = b["box"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!([got.0, got.1, got.2, got.3].as_slice(), want.as_slice(), "rand_bbox {b}");
    }
}

#[test]
fn label_smoothing_per_item_losses_average_to_fastais_loss() {
    let f = fixture("losses.json");
    let logits = tensor(&f["logits"]);
    let targ = ints(&f["targ"]);
    let ls = LabelSmoothingCrossEntropy::default();
    let per = ls.loss_per_item(&logits, &targ).unwrap();
    assert_eq!(per.size(), [8]);
    let want = f["label_smoothing"].as_f64().unwrap();
    assert!((per.mean(Kind::Float).double_value(&[]) - want).abs() < 1e-6);
    let ce = CrossEntropyLossFlat.loss_per_item(&logits, &targ).unwrap();
    assert!((ce.mean(Kind::Float).double_value(&[]) - CrossEntropyLossFlat.loss(&logits, &targ).double_value(&[])).abs() < 1e-6);
    assert!(BCEWithLogitsLossFlat::default().loss_per_item(&logits, &targ).is_none());
}

/// Beta(α, α) draws: mean 1/2 and variance 1/(4(2α + 1)).
#[test]
fn beta_draws_have_the_right_moments() {
    let _rng = torch_rng();
    tch::manual_seed(3);
    for alpha in [0.4, 1.0] {
        let s = sample_beta(alpha, 200_000).to_kind(Kind::Double);
        let (m, v) = (s.mean(Kind::Double).double_value(&[]), s.var(true).double_value(&[]));
        let want_v = 1.0 / (4.0 * (2.0 * alpha + 1.0));
        assert!((m - 0.5).abs() < 0.005 && (v - want_v).abs() < 0.005, "alpha {alpha}: mean {m}, var {v} (want {want_v})");
    }
}

// ---------------------------------------------------------------- training with the recipe

fn shapes(n: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let y = Tensor::randint(4, [n], (Kind::Int64, Device::Cpu));
    let x = Tensor::randn([n, 3, 16, 16], (Kind::Float, Device::Cpu)) * 0.3;
    // class c brightens channel c % 3 (and class 3 all channels) in the centre
    let onehot = y.one_hot(4).to_kind(Kind::Float);
    let ch = (onehot.narrow(1, 0, 3) + onehot.narrow(1, 3, 1)).view([n, 3, 1, 1]);
    let _ = x.narrow(2, 4, 8).narrow(3, 4, 8).g_add_(&(ch * 1.5));
    (x, y)
}

fn dls(n_train: i64, n_valid: i64, bs: usize) -> DataLoaders {
    let (x, y) = shapes(n_train, 1);
    let (vx, vy) = shapes(n_valid, 2);
    DataLoaders {
        train: Arc::new(TensorLoader::new(x, y, bs, true, true, 7, Device::Cpu).unwrap()),
        valid: Arc::new(TensorLoader::new(vx, vy, 64, false, false, 0, Device::Cpu).unwrap()),
        vocab: CategoryMap::new(["a", "b", "c", "d"]),
    }
}

fn learner(d: DataLoaders, seed: i64) -> Learner {
    tch::set_num_threads(1);
    tch::manual_seed(seed);
    let model = SimpleCnn::new(8, 16, 4, Device::Cpu);
    Learner::new(d, Box::new(model), Box::new(CrossEntropyLossFlat)).unwrap().with_seed(seed as u64)
}

/// Records the weights after every optimizer step and the validation loss of each epoch.
struct Spy {
    steps: Arc<Mutex<Vec<Vec<(String, Tensor)>>>>,
}
impl Callback for Spy {
    fn name(&self) -> String { "Spy".into() }
    fn after_step(&mut self, l: &mut Learner) -> kestrel::Result<()> {
        self.steps.lock().unwrap().push(l.model_state());
        Ok(())
    }
}

/// The EMA callback leaves in the model exactly the average of the weights after each step,
/// `ema ← d_n·ema + (1 − d_n)·w_n` with `d_n = min(decay, (1+n)/(10+n))`, from the initial
/// weights; the validation of the epoch ran on the averaged weights.
#[test]
fn ema_leaves_the_average_of_the_steps() {
    let _rng = torch_rng();
    let learn = learner(dls(64, 32, 16), 3);
    let init = learn.model_state();
    let steps = Arc::new(Mutex::new(Vec::new()));
    let ema = EmaCallback::new(0.9);
    let mut learn = learn.with_cb(Box::new(Spy { steps: steps.clone() })).with_cb(Box::new(ema));
    learn.fit(2, 1e-2).unwrap();
    let steps = steps.lock().unwrap();
    assert_eq!(steps.len(), 8, "4 batches × 2 epochs");
    let probe = EmaCallback::new(0.9);
    let mut avg: Vec<(String, Tensor)> = init.iter().filter(|(_, t)| t.is_floating_point()).map(|(k, t)| (k.clone(), t.to_kind(Kind::Double))).collect();
    for (n, s) in steps.iter().enumerate() {
        let d = probe.decay_at(n as u64);
        for (k, a) in avg.iter_mut() {
            let w = &s.iter().find(|(k2, _)| k2 == k).unwrap().1;
            *a = &*a * d + w.to_kind(Kind::Double) * (1.0 - d);
        }
    }
    assert!((probe.decay_at(0) - 0.1).abs() < 1e-12 && (probe.decay_at(1000) - 0.9).abs() < 1e-12);
    let now = learn.model_state();
    for (k, a) in &avg {
        let t = &now.iter().find(|(k2, _)| k2 == k).unwrap().1;
        assert!(max_diff(&t.to_kind(Kind::Double), a) < 1e-5, "{k} is the EMA");
    }
    let last = &steps[7];
    assert!(last.iter().zip(&now).any(|((_, a), (_, b))| !a.equal(b)), "the model holds the average, not the last step");
    // The last recorded valid_loss is the averaged weights' (validated with the EMA weights).
    let v = learn.validate().unwrap()[0];
    let rec = learn.recorder.values.last().unwrap()[1];
    assert!((v - rec).abs() < 1e-5, "validate {v} vs recorded {rec}");
}

/// MixUp and CutMix train (the loss goes down on learnable data) and leave validation alone.
#[test]
fn mixup_and_cutmix_train() {
    let _rng = torch_rng();
    for cb in [MixHandler::mixup(0.4), MixHandler::cutmix(1.0)] {
        let name = cb.name();
        let mut learn = learner(dls(128, 64, 16), 4).with_cb(Box::new(cb));
        let before = learn.validate().unwrap()[0];
        learn.fit_one_cycle(3, 1e-2).unwrap();
        let after = learn.validate().unwrap()[0];
        assert!(after < before * 0.8, "{name}: valid loss {before} → {after}");
        // validation is plain cross-entropy: recorded == validate()
        let rec = learn.recorder.values.last().unwrap()[1];
        assert!((after - rec).abs() < 1e-5, "{name}: {after} vs {rec}");
    }
    // A loss without per-item losses is refused by name.
    let mut learn = learner(dls(32, 16, 16), 4).with_cb(Box::new(MixHandler::mixup(0.4)));
    learn.loss_func = Box::new(BCEWithLogitsLossFlat::default());
    let err = format!("{:#}", learn.fit(1, 1e-3).unwrap_err());
    assert!(err.contains("BCEWithLogitsLossFlat"), "{err}");
}

/// Epoch durations, to check the time budget in units of epochs.
struct EpochTimes(Arc<Mutex<Vec<(usize, f64)>>>, Option<Instant>);
impl Callback for EpochTimes {
    fn name(&self) -> String { "EpochTimes".into() }
    fn before_epoch(&mut self, _: &mut Learner) -> kestrel::Result<()> { self.1 = Some(Instant::now()); Ok(()) }
    fn after_epoch(&mut self, l: &mut Learner) -> kestrel::Result<()> {
        self.0.lock().unwrap().push((l.phase, self.1.unwrap().elapsed().as_secs_f64()));
        Ok(())
    }
}

/// `fine_tune_for(budget)` ends within one epoch of the budget and fits the one-cycle
/// schedule to the epochs it runs (the learning rate ends near zero, as a full cycle does).
#[test]
fn fine_tune_for_ends_within_the_budget() {
    let _rng = torch_rng();
    let times = Arc::new(Mutex::new(Vec::new()));
    let mut learn = learner(dls(512, 64, 32), 5).with_cb(Box::new(EpochTimes(times.clone(), None)));
    // One epoch first to measure how long an epoch takes on this (possibly busy) machine.
    let t0 = Instant::now();
    learn.fit(1, 1e-3).unwrap();
    let epoch = t0.elapsed().as_secs_f64();
    let budget = Duration::from_secs_f64((epoch * 8.0).clamp(1.0, 20.0));
    times.lock().unwrap().clear();
    let t0 = Instant::now();
    let n = learn.fine_tune_for(budget, 1e-2, FineTuneOptions::default()).unwrap();
    let took = t0.elapsed().as_secs_f64();
    let times = times.lock().unwrap();
    let unfrozen: Vec<f64> = times.iter().filter(|(p, _)| *p == 1).map(|(_, t)| *t).collect();
    assert_eq!(unfrozen.len(), n, "returns the unfrozen epochs run");
    assert!(n >= 2, "{n} epochs in {budget:?} at about {epoch:.2} s each");
    let longest = times.iter().map(|(_, t)| *t).fold(0.0, f64::max);
    let b = budget.as_secs_f64();
    assert!((took - b).abs() <= longest + 0.05 * b, "took {took:.2} s for a budget of {b:.2} s (longest epoch {longest:.2} s; epochs {times:?})");
    let last_lr = learn.recorder.lrs.last().copied().unwrap();
    // The one-cycle schedule was fitted to the epochs run: it ends in its annealing tail
    // (a tenth of the peak 1e-2/2; exactly at the end when epochs take equally long).
    assert!(last_lr < 1e-2 / 2.0 / 10.0, "last lr {last_lr:e}");
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration(" 1.5h").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("2m30s").unwrap(), Duration::from_secs(150));
    for bad in ["60", "-5m", "0s", "xh", "", "5d", "1h30", "1..5m", "m", "5 m"] {
        let e = parse_duration(bad).unwrap_err().to_string();
        assert!(e.contains("duration"), "{bad}: {e}");
    }
}

/// `kestrel fine-tune` without options runs the recipe that `scripts/bench/recipe_cv.sh`
/// measured as `default` (README "Training recipe"): the chapter-5 baseline's presize,
/// size, crop, batch size and learning rate, with EfficientNet-Lite2, 2 frozen and 7
/// unfrozen epochs.
#[test]
fn fine_tune_defaults_are_the_measured_recipe() {
    use clap::Parser;
    let cli = kestrel::cli::Cli::try_parse_from(["kestrel", "fine-tune"]).unwrap();
    let kestrel::cli::Command::FineTune(a) = cli.command else { panic!("not fine-tune: {:?}", cli.command) };
    assert_eq!(a.model.arch, "efficientnet_lite2");
    assert_eq!((a.freeze_epochs, a.epochs), (2, 7));
    assert_eq!((a.data.presize, a.data.bs, a.aug.size, a.aug.min_scale), (460, 32, 224, 0.75));
    assert_eq!(a.lr, "2e-3");
    assert_eq!(a.recipe.lr_mult, 100.0);
    assert!(a.recipe.tta(false) && !a.recipe.tta(true), "TTA by default on single-label data only");
    for (flag, want) in [(&["--tta"][..], Some(true)), (&["--tta", "false"][..], Some(false))] {
        let c = kestrel::cli::Cli::try_parse_from([&["kestrel", "fine-tune"][..], flag].concat()).unwrap();
        assert!(matches!(c.command, kestrel::cli::Command::FineTune(a) if a.recipe.tta == want), "{flag:?}");
    }
    assert!(a.recipe.label_smoothing.is_none() && a.recipe.mixup.is_none() && a.recipe.cutmix.is_none() && a.recipe.ema.is_none());
}
