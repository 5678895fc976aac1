//! The Learner against fastai: schedules, optimizers, losses, metrics and lr_find
//! suggestions equal fastai's numbers (fixtures from scripts/ref/learner_fixture.py);
//! freezing, fine_tune, lr_find restoring weights, checkpoint/resume bit-for-bit,
//! TerminateOnNaN, the GradScaler and the built-in callbacks.

mod torch_rng;
use torch_rng::torch_rng;

use kestrel::callbacks::{Callback, Cancel, CSVLogger, EarlyStoppingCallback, SaveCheckpoint, TerminateOnNaNCallback};
use kestrel::data::{CategoryMap, DataLoaders, TensorLoader};
use kestrel::learner::lr_find::{minimum, slide, steep, valley};
use kestrel::learner::schedule::{Sched, combined_cos};
use kestrel::learner::*;
use kestrel::metrics::{self, F1Score, Metric, Precision, Recall};
use kestrel::models::SimpleCnn;
use rand::Rng as _;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> Value {
    let p = format!("{}/tests/fixtures/learner/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}
fn f64s(v: &Value) -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() }
fn f32s(v: &Value) -> Vec<f32> { f64s(v).into_iter().map(|x| x as f32).collect() }

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol * b.abs().max(1e-300) || (a - b).abs() <= tol, "{what}: {a} vs fastai {b}");
}

// ---------------------------------------------------------------- synthetic data

/// 32×32 images: a coloured square (class = colour: red, green, blue, yellow) of random
/// size and position on a noisy grey background, normalised to about zero mean.
fn shapes(n: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = kestrel::util::rng::seeded(seed);
    let cols = [[1.0f32, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]];
    let s = 32usize;
    let mut x = vec![0f32; n * 3 * s * s];
    let mut y = vec![0i64; n];
    for i in 0..n {
        let c = rng.random_range(0..4usize);
        y[i] = c as i64;
        let side = rng.random_range(8..16usize);
        let (r0, c0) = (rng.random_range(0..s - side), rng.random_range(0..s - side));
        for ch in 0..3 {
            for r in 0..s {
                for q in 0..s {
                    let inside = r >= r0 && r < r0 + side && q >= c0 && q < c0 + side;
                    let v = if inside { cols[c][ch] } else { 0.5 } + rng.random_range(-0.25f32..0.25);
                    x[((i * 3 + ch) * s + r) * s + q] = (v - 0.5) / 0.3;
                }
            }
        }
    }
    (Tensor::from_slice(&x).reshape([n as i64, 3, s as i64, s as i64]), Tensor::from_slice(&y))
}

fn dls(n_train: usize, n_valid: usize, bs: usize) -> DataLoaders {
    let (x, y) = shapes(n_train, 1);
    let (vx, vy) = shapes(n_valid, 2);
    DataLoaders {
        train: Arc::new(TensorLoader::new(x, y, bs, true, true, 7, Device::Cpu).unwrap()),
        valid: Arc::new(TensorLoader::new(vx, vy, 64, false, false, 0, Device::Cpu).unwrap()),
        vocab: CategoryMap::new(["c0_red", "c1_green", "c2_blue", "c3_yellow"]),
    }
}

fn learner(d: DataLoaders, seed: i64) -> Learner {
    tch::set_num_threads(1);
    tch::manual_seed(seed);
    let model = SimpleCnn::new(8, 16, 4, Device::Cpu);
    Learner::new(d, Box::new(model), Box::new(CrossEntropyLossFlat)).unwrap().with_seed(seed as u64)
}

fn state_eq(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> Vec<String> {
    a.iter().zip(b).filter(|((_, x), (_, y))| !x.equal(y)).map(|((n, _), _)| n.clone()).collect()
}

// ---------------------------------------------------------------- fastai fixtures

#[test]
fn schedules_equal_fastai() {
    let f = fixture("schedules.json");
    for s in f["scheds"].as_array().unwrap() {
        let (a, b) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
        let sc = match s["kind"].as_str().unwrap() { "cos" => Sched::cos(a, b), "lin" => Sched::lin(a, b), "exp" => Sched::exp(a, b), _ => Sched::no(a, b) };
        for (p, v) in f64s(&s["pos"]).iter().zip(f64s(&s["values"])) {
            assert!((sc.at(*p) - v).abs() < 1e-12, "{:?} at {p}: {} vs {v}", sc.kind, sc.at(*p));
        }
    }
    for c in f["combined"].as_array().unwrap() {
        let cc = combined_cos(c["pct"].as_f64().unwrap(), c["start"].as_f64().unwrap(), c["middle"].as_f64().unwrap(), c["end"].as_f64().unwrap());
        for (p, v) in f64s(&c["pos"]).iter().zip(f64s(&c["values"])) {
            assert!((cc.at(*p) - v).abs() < 1e-12, "combined_cos at {p}: {} vs {v}", cc.at(*p));
        }
    }
    for e in f["even_mults"].as_array().unwrap() {
        let got = even_mults(e["start"].as_f64().unwrap(), e["stop"].as_f64().unwrap(), e["n"].as_u64().unwrap() as usize);
        for (g, v) in got.iter().zip(f64s(&e["values"])) { assert!((g - v).abs() < 1e-12 * v.abs(), "even_mults {g} vs {v}"); }
    }
    for s in f["slices"].as_array().unwrap() {
        let hi = s["stop"].as_f64().unwrap();
        let lr = match s["start"].as_f64() { Some(lo) => Lr::Slice(lo, hi), None => Lr::SliceHi(hi) };
        for (g, v) in lr.per_group(3).iter().zip(f64s(&s["values"])) { assert!((g - v).abs() < 1e-12 * v.abs(), "{lr:?}: {g} vs {v}"); }
    }
    // fit_one_cycle: lr and mom per batch with fastai's pct_train accumulation
    for c in f["one_cycle"].as_array().unwrap() {
        let (n_epoch, n_iter) = (c["n_epoch"].as_u64().unwrap() as usize, c["n_iter"].as_u64().unwrap() as usize);
        let oc = OneCycle::new(&f64s(&c["lr_max"]), c["div"].as_f64().unwrap(), c["div_final"].as_f64().unwrap(),
                               c["pct_start"].as_f64().unwrap(), (0.95, 0.85, 0.95));
        let (lrs, moms) = (c["lrs"].as_array().unwrap(), f64s(&c["moms"]));
        let mut k = 0;
        for epoch in 0..n_epoch {
            let mut pct = epoch as f64 / n_epoch as f64;
            for _ in 0..n_iter {
                for (g, v) in oc.lr.iter().zip(f64s(&lrs[k])) { assert!((g.at(pct) - v).abs() < 1e-12, "one-cycle lr batch {k}: {} vs {v}", g.at(pct)); }
                assert!((oc.mom.at(pct) - moms[k]).abs() < 1e-12, "one-cycle mom batch {k}");
                pct += 1.0 / (n_iter * n_epoch) as f64;
                k += 1;
            }
        }
    }
}

#[test]
fn fit_one_cycle_drives_the_optimizer_like_fastai() {
    let _rng = torch_rng();
    let c = &fixture("schedules.json")["one_cycle"][0];
    // 4 batches per epoch, 2 epochs, lr_max 1e-2
    let mut learn = learner(dls(32, 16, 8), 0);
    learn.fit_one_cycle(2, 1e-2).unwrap();
    let want: Vec<f64> = c["lrs"].as_array().unwrap().iter().map(|v| f64s(v)[0]).collect();
    assert_eq!(learn.recorder.lrs.len(), 8);
    for (g, v) in learn.recorder.lrs.iter().zip(&want) { assert!((g - v).abs() < 1e-12, "lr {g} vs {v}"); }
    for (g, v) in learn.recorder.moms.iter().zip(f64s(&c["moms"])) { assert!((g - v).abs() < 1e-12, "mom {g} vs {v}"); }
    assert_eq!(learn.recorder.values.len(), 2);
    assert_eq!(learn.recorder.iters, vec![4, 8]);
}

fn run_opt(kind: OptKind, cfg: &Value, f: &Value) {
    let w = Tensor::from_slice(&f32s(&f["w0"])).set_requires_grad(true);
    let b = Tensor::from_slice(&f32s(&f["b0"])).set_requires_grad(true);
    let mk = |name: &str, t: &Tensor, do_wd| OptParam { name: name.into(), tensor: t.shallow_clone(), do_wd, force_train: false, grad_avg: None, sqr_avg: None, step: 0 };
    let base = match kind { OptKind::Adam => Hypers::adam(0.0), OptKind::Sgd => Hypers::sgd(0.0) };
    let mut opt = Optimizer::new(kind, vec![vec![mk("w", &w, true)], vec![mk("b", &b, false)]], base).unwrap();
    opt.set_lrs(&f64s(&cfg["lr"]));
    opt.set_mom(cfg["mom"].as_f64().unwrap());
    opt.set_wd(cfg["wd"].as_f64().unwrap());
    for (g, step) in f["grads"].as_array().unwrap().iter().zip(cfg["steps"].as_array().unwrap()) {
        let loss = (&w * Tensor::from_slice(&f32s(&g["w"]))).sum(Kind::Float) + (&b * Tensor::from_slice(&f32s(&g["b"]))).sum(Kind::Float);
        loss.backward();
        opt.step();
        opt.zero_grad();
        for (t, key) in [(&w, "w"), (&b, "b")] {
            let got: Vec<f32> = Vec::try_from(t.detach()).unwrap();
            for (x, y) in got.iter().zip(f32s(&step[key])) { assert!((x - y).abs() < 1e-6, "{kind:?} {key}: {x} vs fastai {y}"); }
        }
    }
}

#[test]
fn adam_and_sgd_steps_equal_fastai() {
    let f = fixture("optim.json");
    run_opt(OptKind::Adam, &f["adam"], &f);
    run_opt(OptKind::Sgd, &f["sgd"], &f);
}

#[test]
fn lr_find_suggestions_equal_fastai() {
    let f = fixture("lr_find.json");
    // the Recorder's smoothing equals fastai's AvgSmoothLoss
    let mut rec = kestrel::callbacks::Recorder::default();
    for (r, want) in f64s(&f["raw_losses"]).iter().zip(f64s(&f["losses"])) {
        let got = rec.add_batch(*r, 0.0, 0.0);
        assert!((got - want).abs() < 1e-6, "smooth loss {got} vs {want}");
    }
    let num_it = f["num_it"].as_u64().unwrap() as usize;
    let (lrs, losses) = (f32s(&f["lrs"]), f32s(&f["losses"]));
    let (lrs, losses) = (&lrs[num_it / 10..lrs.len() - 5], &losses[num_it / 10..losses.len() - 5]);
    let s = &f["suggestions"];
    for (name, got) in [("valley", valley(lrs, losses)), ("slide", slide(lrs, losses)), ("minimum", minimum(lrs, losses)), ("steep", steep(lrs, losses))] {
        close(got.lr, s[name]["lr"].as_f64().unwrap(), 1e-6, name);
        close(got.point_lr, s[name]["point_lr"].as_f64().unwrap(), 1e-6, name);
        close(got.point_loss, s[name]["point_loss"].as_f64().unwrap(), 1e-5, name);
    }
}

#[test]
fn losses_and_metrics_equal_fastai() {
    let f = fixture("losses.json");
    let logits = Tensor::from_slice(&f32s(&f["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().clone()).collect::<Vec<_>>().into())).reshape([8, 5]);
    let targ = Tensor::from_slice(&f64s(&f["targ"]).iter().map(|v| *v as i64).collect::<Vec<_>>());
    let multi = Tensor::from_slice(&f32s(&f["multi_targ"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().clone()).collect::<Vec<_>>().into())).reshape([8, 5]);
    let v = |k: &str| f[k].as_f64().unwrap();
    close(CrossEntropyLossFlat.loss(&logits, &targ).double_value(&[]), v("cross_entropy"), 1e-6, "cross_entropy");
    close(LabelSmoothingCrossEntropy::default().loss(&logits, &targ).double_value(&[]), v("label_smoothing"), 1e-6, "label_smoothing");
    close(BCEWithLogitsLossFlat::default().loss(&logits, &multi).double_value(&[]), v("bce"), 1e-6, "bce");
    let mut ms: Vec<(Box<dyn Metric>, &str)> = vec![
        (metrics::accuracy(), "accuracy"), (metrics::error_rate(), "error_rate"), (metrics::top_k_accuracy(3), "top_3_accuracy"),
        (Box::new(F1Score::new()), "f1_macro"), (Box::new(Precision::new()), "precision_macro"), (Box::new(Recall::new()), "recall_macro"),
    ];
    for (m, key) in ms.iter_mut() {
        m.reset();
        // two batches: epoch values must not depend on the split
        m.accumulate(&logits.narrow(0, 0, 3), &targ.narrow(0, 0, 3));
        m.accumulate(&logits.narrow(0, 3, 5), &targ.narrow(0, 3, 5));
        close(m.value(), v(key), 1e-6, key);
    }
    let mut am = metrics::accuracy_multi(0.5);
    am.accumulate(&logits, &multi);
    close(am.value(), v("accuracy_multi"), 1e-6, "accuracy_multi");
}

// ---------------------------------------------------------------- training behaviour

#[test]
fn lr_find_leaves_weights_unchanged_and_plots() {
    let _rng = torch_rng();
    let mut learn = learner(dls(64, 16, 8), 3);
    let before = learn.model_state();
    let r = learn.lr_find(LrFindOptions::default()).unwrap();
    assert!(state_eq(&before, &learn.model_state()).is_empty(), "weights changed by lr_find");
    assert!(learn.opt.groups.iter().flatten().all(|p| p.step == 0 && p.grad_avg.is_none()), "optimizer state not restored");
    assert!(r.lrs.len() > 15 && r.lrs.len() <= 100);
    assert!((r.lrs[0] - 1e-7).abs() < 1e-20);
    for s in [r.valley, r.minimum, r.steep, r.slide] { assert!(s.lr > 1e-7 && s.lr < 10.0, "{s:?}"); }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lr_find.png");
    r.plot(&p).unwrap();
    let img = image::open(&p).unwrap();
    assert_eq!((img.width(), img.height()), (800, 500));
}

#[test]
fn frozen_epoch_trains_only_head_and_batchnorm() {
    let _rng = torch_rng();
    let mut learn = learner(dls(64, 16, 16), 4);
    learn.freeze();
    let before = learn.model_state();
    learn.fit(1, 1e-2).unwrap();
    let changed = state_eq(&before, &learn.model_state());
    let bn = |n: &String| n.starts_with("0.1.") || n.starts_with("0.4.");
    for (name, _) in &before {
        let is_changed = changed.contains(name);
        if name.starts_with("1.") || bn(name) {
            assert!(is_changed, "{name} should have trained");
        } else {
            assert!(!is_changed, "frozen body weight {name} changed");
        }
    }
    learn.unfreeze();
    let before = learn.model_state();
    learn.fit(1, 1e-2).unwrap();
    assert!(state_eq(&before, &learn.model_state()).contains(&"0.0.weight".to_string()), "unfrozen body did not train");
}

#[test]
fn fine_tune_learns_synthetic_shapes() {
    let _rng = torch_rng();
    let mut learn = learner(dls(512, 128, 32), 5).with_metrics(vec![metrics::accuracy()]).with_cb(Box::new(kestrel::callbacks::ProgressCallback::new()));
    // a randomly initialised body needs a higher base_lr than fastai's 2e-3 for pretrained ones
    learn.fine_tune(4, 0.05).unwrap();
    let acc = *learn.recorder.values.last().unwrap().last().unwrap();
    assert!(acc >= 0.95, "valid accuracy {acc}");
    assert_eq!(learn.recorder.values.len(), 4, "recorder holds the unfrozen phase");
    // the unfrozen phase used slice(base_lr/2/100, base_lr/2) with div 5: the head starts at 0.025/5
    assert!((learn.recorder.lrs[0] - 0.025 / 5.0).abs() < 1e-12, "{}", learn.recorder.lrs[0]);
    let dir = tempfile::tempdir().unwrap();
    learn.recorder.plot_loss(&dir.path().join("loss.png")).unwrap();
    learn.recorder.plot_sched(&dir.path().join("sched.png")).unwrap();
    assert!(image::open(dir.path().join("sched.png")).is_ok());
}

/// Cancels the fit once the unfrozen phase has done `at` batches (a simulated crash).
struct Crash { at: usize }
impl Callback for Crash {
    fn name(&self) -> String { "Crash".into() }
    fn order(&self) -> i32 { 90 }
    fn after_batch(&mut self, l: &mut Learner) -> kestrel::Result<()> {
        if l.training && l.phase == 1 && l.train_iter == self.at { return Err(Cancel::Fit.into()); }
        Ok(())
    }
}

#[test]
fn resumed_fine_tune_ends_bitwise_equal() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let run = |cbs: Vec<Box<dyn Callback>>, resume: bool| {
        let mut l = learner(dls(48, 16, 8), 6).with_model_dir(dir.path());
        for c in cbs { l.cbs.push(c); }
        if resume {
            let pos = l.load_checkpoint("ckpt").unwrap();
            assert_eq!((pos.phase, pos.epoch, pos.iter), (1, 1, 3), "{pos:?}");
        }
        l.fine_tune(2, 1e-2).unwrap();
        l.model_state()
    };
    // 6 batches per epoch; checkpoint every 3 batches; crash after batch 10 of the unfrozen phase
    let _ = run(vec![Box::new(SaveCheckpoint::new("ckpt", Some(3))), Box::new(Crash { at: 10 })], false);
    let resumed = run(vec![], true);
    let full = run(vec![], false);
    assert!(state_eq(&full, &resumed).is_empty(), "differs: {:?}", state_eq(&full, &resumed));
}

/// CrossEntropy that returns NaN from the `at`-th call on.
struct NanAfter { at: usize, n: AtomicUsize }
impl Loss for NanAfter {
    fn loss(&self, p: &Tensor, t: &Tensor) -> Tensor {
        let l = CrossEntropyLossFlat.loss(p, t);
        if self.n.fetch_add(1, Ordering::SeqCst) >= self.at { l * f64::NAN } else { l }
    }
    fn activation(&self, p: &Tensor) -> Tensor { p.softmax(-1, Kind::Float) }
    fn decodes(&self, p: &Tensor) -> Tensor { p.argmax(-1, false) }
    fn name(&self) -> String { "NanAfter".into() }
}

#[test]
fn nan_loss_stops_with_terminate_on_nan_message() {
    let _rng = torch_rng();
    let mut learn = learner(dls(64, 16, 8), 7).with_cb(Box::new(TerminateOnNaNCallback));
    learn.loss_func = Box::new(NanAfter { at: 11, n: AtomicUsize::new(0) });
    learn.fit(3, 1e-3).unwrap();
    let msg = learn.stop_reason.clone().expect("stopped");
    assert!(msg.contains("TerminateOnNaN") && msg.contains("epoch 1, batch 2"), "{msg}");
    assert_eq!(learn.recorder.values.len(), 1, "only the first epoch completed");
}

#[test]
fn grad_scaler_skips_overflow_and_grows() {
    let _rng = torch_rng();
    let mut s = GradScaler::new();
    assert_eq!(s.scale(), 65536.0);
    let g = Tensor::from_slice(&[65536.0f32, f32::INFINITY]);
    assert!(!s.unscale_and_update(std::slice::from_ref(&g)), "overflow step must be skipped");
    assert_eq!(s.scale(), 32768.0);
    for i in 0..2000 {
        let g = Tensor::from_slice(&[32768.0f32 * 2.0, 0.0]);
        assert!(s.unscale_and_update(&[g.shallow_clone()]));
        if i == 0 { assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![2.0, 0.0], "gradients unscaled in place"); }
        if i < 1999 { assert_eq!(s.scale(), 32768.0); }
    }
    assert_eq!(s.scale(), 65536.0);
    if !tch::Cuda::is_available() {
        let mut learn = learner(dls(16, 16, 8), 8);
        let e = learn.to_fp16().unwrap_err().to_string();
        assert!(e.contains("needs a CUDA GPU") && e.contains("--precision bf16"), "{e}");
    }
}

#[test]
fn early_stopping_and_csv_logger() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("history.csv");
    let mut learn = learner(dls(32, 16, 8), 9)
        .with_metrics(vec![metrics::error_rate()])
        .with_cb(Box::new(EarlyStoppingCallback::new("valid_loss", 10.0, 1)))
        .with_cb(Box::new(CSVLogger::new(&csv, false)));
    learn.fit(5, 1e-3).unwrap(); // min_delta 10: no epoch after the first counts as improving
    assert_eq!(learn.recorder.values.len(), 2);
    assert!(learn.stop_reason.as_deref().unwrap_or("").contains("early stopping"));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "epoch,train_loss,valid_loss,error_rate,time");
    assert_eq!(lines.len(), 3);
    let valid = learn.validate().unwrap();
    assert!((valid[0] - learn.recorder.values[1][1]).abs() < 1e-6);
}

#[test]
fn bf16_autocast_on_cpu() {
    let _rng = torch_rng();
    let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
    let inside = kestrel::learner::fp16::with_cpu_autocast(|| a.matmul(&a));
    assert_eq!(inside.kind(), Kind::BFloat16, "matmul under CPU autocast runs in bfloat16");
    assert_eq!(a.matmul(&a).kind(), Kind::Float, "autocast is off again afterwards");
    let mut learn = learner(dls(32, 16, 8), 10);
    learn.to_bf16().unwrap();
    learn.fit(1, 1e-3).unwrap();
    assert!(learn.recorder.values[0].iter().all(|v| v.is_finite()), "{:?}", learn.recorder.values);
    assert!(learn.model.var_store().variables().values().all(|v| v.kind() == Kind::Float), "weights stay float32");
}
