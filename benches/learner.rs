//! One training step (forward, loss, backward, optimizer step) of fastai's vision learner
//! model (`VisionModel`: body + fastai head, 37 classes) for EfficientNet-Lite0 and
//! ResNet-34 at 224², batch 32, 2 torch threads: kestrel's Learner loop against a bare
//! PyTorch Python loop on the same architecture (scripts/bench/learner_step.py), in the
//! same run, interleaved; prints images/s of both and the ratio (target ≥ 0.97) for each
//! layout: contiguous float32, channels-last float32, channels-last + bfloat16 autocast.
//!
//! Run: `cargo bench --profile dev --bench learner` (`KESTREL_BENCH_STEPS` timed steps,
//! default 3; `KESTREL_BENCH_ARCH=resnet34` or `efficientnet_lite0` for one model). Needs
//! the python of scripts/setup.sh's venv for the baseline
//! (`KESTREL_BENCH_PYTHON` overrides); without it only kestrel's numbers are printed.
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a tiny smoke run.

use kestrel::data::{CategoryMap, DataLoaders, TensorLoader};
use kestrel::learner::{CrossEntropyLossFlat, Learner};
use kestrel::models::{Arch, VisionModel};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const THREADS: i32 = 2;

#[derive(Clone, Copy)]
struct Cfg { arch: Arch, bs: i64, size: i64, steps: usize, channels_last: bool, bf16: bool }

fn kestrel_img_per_s(c: Cfg) -> f64 {
    let (bs, steps) = (c.bs, c.steps as i64);
    tch::manual_seed(0);
    let x = Tensor::randn([bs * steps.max(2), 3, c.size, c.size], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(37, [bs * steps.max(2)], (Kind::Int64, Device::Cpu));
    let loader = |n: i64| Arc::new(TensorLoader::new(x.narrow(0, 0, bs * n), y.narrow(0, 0, bs * n), bs as usize, false, true, 0, Device::Cpu).expect("loader"));
    let warm = loader(2);
    let dls = DataLoaders { train: warm.clone(), valid: warm, vocab: CategoryMap::new((0..37).map(|i| format!("c{i}"))) };
    let model = VisionModel::new(c.arch, 37, Device::Cpu).expect("model");
    let mut learn = Learner::new(dls, Box::new(model), Box::new(CrossEntropyLossFlat)).expect("learner");
    if c.channels_last { learn.to_channels_last(); }
    if c.bf16 { learn.to_bf16().expect("bf16"); }
    // warm-up: 2 training steps (the validation phase is cancelled)
    learn.cbs.push(Box::new(StopAfterTrain));
    learn.fit(1, 1e-3).expect("warm-up");
    learn.dls.train = loader(steps);
    let t = Instant::now();
    learn.fit(1, 1e-3).expect("fit");
    (c.bs as usize * c.steps) as f64 / t.elapsed().as_secs_f64()
}

/// Cancels the fit after the training phase (no validation in the timing).
struct StopAfterTrain;
impl kestrel::callbacks::Callback for StopAfterTrain {
    fn name(&self) -> String { "StopAfterTrain".into() }
    fn after_train(&mut self, _: &mut Learner) -> kestrel::Result<()> { Err(kestrel::callbacks::Cancel::Fit.into()) }
}

fn python_img_per_s(c: Cfg) -> Option<f64> {
    let py = std::env::var_os("KESTREL_BENCH_PYTHON").map(std::path::PathBuf::from)
        .or_else(|| kestrel::util::testdata::venv_python("venv-torch-2.11.0"));
    let Some(py) = py.filter(|p| p.is_file()) else {
        eprintln!("skipped: the PyTorch baseline needs the venv of scripts/setup.sh (or KESTREL_BENCH_PYTHON)");
        return None;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench/learner_step.py");
    let flag = |b: bool| if b { "1" } else { "0" };
    let out = std::process::Command::new(&py)
        .args([script, c.arch.name(), &THREADS.to_string(), &c.bs.to_string(), &c.size.to_string(), &c.steps.to_string(),
            flag(c.channels_last), flag(c.bf16)])
        .output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().nth(1).and_then(|v| v.parse().ok());
    if v.is_none() { eprintln!("PyTorch baseline failed: {}", String::from_utf8_lossy(&out.stderr)); }
    v
}

fn main() {
    tch::set_num_threads(THREADS);
    let full = std::env::args().any(|a| a == "--bench");
    let steps = std::env::var("KESTREL_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let only = std::env::var("KESTREL_BENCH_ARCH").ok();
    if !full {
        let c = Cfg { arch: Arch::Resnet18, bs: 2, size: 64, steps: 1, channels_last: true, bf16: false };
        println!("learner bench smoke run: {:.1} img/s; `cargo bench --bench learner` measures", kestrel_img_per_s(c));
        return;
    }
    println!("training step, 224x224, batch 32, {THREADS} threads, {steps} timed steps (after 2 warm-up steps)");
    for arch in [Arch::EfficientNetLite0, Arch::Resnet34] {
        if only.as_deref().is_some_and(|o| o != arch.name()) { continue; }
        for (channels_last, bf16) in [(false, false), (true, false), (true, true)] {
            let c = Cfg { arch, bs: 32, size: 224, steps, channels_last, bf16 };
            let layout = match (channels_last, bf16) { (false, _) => "contiguous f32", (true, false) => "channels-last f32", _ => "channels-last bf16" };
            let k = kestrel_img_per_s(c);
            match python_img_per_s(c) {
                Some(p) => println!("{:>18} {layout:>18}: kestrel {k:6.2} img/s, PyTorch {p:6.2} img/s, ratio {:.3} (target >= 0.97)", arch.name(), k / p),
                None => println!("{:>18} {layout:>18}: kestrel {k:6.2} img/s", arch.name()),
            }
        }
    }
}
