//! One training step (forward, loss, backward, optimizer step) at 224², batch 32, 2 torch
//! threads: kestrel's Learner loop against a bare PyTorch Python loop on the same network,
//! in the same run; prints images/s of both and the ratio (target ≥ 0.97), in the default
//! (contiguous) layout and in channels-last.
//!
//! Network: `BenchCnn` (4 × conv3×3/2 + BN + ReLU, 32…256 channels, pool, linear 37) until
//! the model zoo's ResNet-34 / EfficientNet-Lite0 are available to this benchmark.
//! Run: `cargo bench --profile dev --bench learner`. Needs
//! /root/.cache/kestrel/venv-torch-2.11.0/bin/python for the baseline (`KESTREL_BENCH_PYTHON`
//! overrides); without it only kestrel's numbers are printed.

use kestrel::data::{CategoryMap, DataLoaders, TensorLoader};
use kestrel::learner::{CrossEntropyLossFlat, Learner};
use kestrel::models::{Model, ParamInfo};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn, nn::ModuleT};

const BS: i64 = 32;
const SIZE: i64 = 224;
const STEPS: usize = 6;
const THREADS: i32 = 2;

struct BenchCnn { vs: nn::VarStore, body: nn::SequentialT, head: nn::Linear }

impl BenchCnn {
    fn new() -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let mut body = nn::seq_t();
        let mut c = 3;
        for (i, o) in [32, 64, 128, 256].into_iter().enumerate() {
            let cfg = nn::ConvConfig { stride: 2, padding: 1, bias: false, ..Default::default() };
            body = body.add(nn::conv2d(&p / "0" / (3 * i), c, o, 3, cfg))
                .add(nn::batch_norm2d(&p / "0" / (3 * i + 1), o, Default::default()))
                .add_fn(|x| x.relu());
            c = o;
        }
        let body = body.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1));
        let head = nn::linear(&p / "1", 256, 37, Default::default());
        BenchCnn { vs, body, head }
    }
}

impl Model for BenchCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor { self.body.forward_t(xs, train).apply(&self.head) }
    fn var_store(&self) -> &nn::VarStore { &self.vs }
    fn var_store_mut(&mut self) -> &mut nn::VarStore { &mut self.vs }
    fn params(&self) -> Vec<ParamInfo> {
        let mut v: Vec<String> = self.vs.variables().into_keys().filter(|n| !n.contains("running_")).collect();
        v.sort();
        v.into_iter().map(|name| {
            let bn = name.starts_with("0.") && name.split('.').nth(1).and_then(|s| s.parse::<usize>().ok()).is_some_and(|i| i % 3 == 1);
            let group = if name.starts_with("1.") { 2 } else if name.starts_with("0.0.") || name.starts_with("0.1.") { 0 } else { 1 };
            ParamInfo { is_bias: name.ends_with(".bias"), is_bn: bn, group, name }
        }).collect()
    }
    fn n_groups(&self) -> usize { 3 }
}

fn kestrel_img_per_s(channels_last: bool) -> f64 {
    tch::manual_seed(0);
    let x = Tensor::randn([BS * (STEPS as i64 + 2), 3, SIZE, SIZE], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(37, [BS * (STEPS as i64 + 2)], (Kind::Int64, Device::Cpu));
    let train = Arc::new(TensorLoader::new(x.narrow(0, 0, BS * 2), y.narrow(0, 0, BS * 2), BS as usize, false, true, 0, Device::Cpu).unwrap());
    let dls = DataLoaders { train: train.clone(), valid: train, vocab: CategoryMap::new((0..37).map(|i| format!("c{i}"))) };
    let mut learn = Learner::new(dls, Box::new(BenchCnn::new()), Box::new(CrossEntropyLossFlat)).unwrap();
    if channels_last { learn.to_channels_last(); }
    // warm-up: one epoch of 2 batches (train) + validation
    learn.fit(1, 1e-3).unwrap();
    let timed = Arc::new(TensorLoader::new(x.narrow(0, 0, BS * STEPS as i64), y.narrow(0, 0, BS * STEPS as i64), BS as usize, false, true, 0, Device::Cpu).unwrap());
    learn.dls.train = timed;
    // time only the training phase: a callback notes when training ends
    let t = Instant::now();
    learn.cbs.push(Box::new(StopAfterTrain));
    learn.fit(1, 1e-3).unwrap();
    (BS as usize * STEPS) as f64 / t.elapsed().as_secs_f64()
}

/// Cancels the fit after the training phase (no validation in the timing).
struct StopAfterTrain;
impl kestrel::callbacks::Callback for StopAfterTrain {
    fn name(&self) -> String { "StopAfterTrain".into() }
    fn after_train(&mut self, _: &mut Learner) -> kestrel::Result<()> { Err(kestrel::callbacks::Cancel::Fit.into()) }
}

fn python_img_per_s(channels_last: bool) -> Option<f64> {
    let py = std::env::var("KESTREL_BENCH_PYTHON").unwrap_or_else(|_| "/root/.cache/kestrel/venv-torch-2.11.0/bin/python".into());
    if !std::path::Path::new(&py).is_file() {
        eprintln!("skipped: PyTorch baseline needs {py} (set KESTREL_BENCH_PYTHON)");
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench/learner_step.py");
    let out = std::process::Command::new(&py)
        .args([script, &THREADS.to_string(), &BS.to_string(), &SIZE.to_string(), &STEPS.to_string(), if channels_last { "1" } else { "0" }])
        .output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().nth(1).and_then(|v| v.parse().ok());
    if v.is_none() { eprintln!("PyTorch baseline failed: {}", String::from_utf8_lossy(&out.stderr)); }
    v
}

fn main() {
    tch::set_num_threads(THREADS);
    println!("training step, BenchCnn, {SIZE}x{SIZE}, batch {BS}, {THREADS} threads, {STEPS} timed steps");
    for cl in [false, true] {
        let layout = if cl { "channels-last" } else { "contiguous" };
        let k = kestrel_img_per_s(cl);
        match python_img_per_s(cl) {
            Some(p) => println!("{layout:>13}: kestrel {k:.1} img/s, PyTorch {p:.1} img/s, ratio {:.3} (target >= 0.97)", k / p),
            None => println!("{layout:>13}: kestrel {k:.1} img/s"),
        }
    }
}
