//! Inference speed of ResNet-34 and EfficientNet-Lite0 (224², batch 32, 2 threads, eval
//! mode, random weights) in kestrel and in PyTorch (benches/models_torch.py run by the
//! python of scripts/setup.sh's venv, same threads), in the same run; prints images/s and the ratio
//! kestrel / PyTorch (target ≥ 0.95). Each side reports its best of `ITERS` batches over
//! `ROUNDS` interleaved rounds.
//!
//! Run: `cargo bench --bench models`. Without the venv python the PyTorch side is skipped.

use std::process::Command;
use std::time::Instant;

use kestrel::models::Arch;
use kestrel::models::imagenet::ImagenetClassifier;
use tch::{Device, Kind, Tensor};

const THREADS: i64 = 2;
const BATCH: i64 = 32;
const SIZE: i64 = 224;
const ITERS: usize = 5;

fn kestrel_best(arch: Arch) -> f64 {
    let model = ImagenetClassifier::new(arch, Device::Cpu).expect("model");
    let xs = Tensor::randn([BATCH, 3, SIZE, SIZE], (Kind::Float, Device::Cpu));
    for _ in 0..2 {
        let _ = model.forward(&xs);
    }
    (0..ITERS)
        .map(|_| {
            let t = Instant::now();
            let _ = model.forward(&xs);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn torch_best() -> Option<serde_json::Value> {
    let Some(python) = kestrel::util::testdata::venv_python("venv-torch-2.11.0") else {
        println!("skipped: the PyTorch baseline needs the venv of scripts/setup.sh (not on this machine)");
        return None;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/models_torch.py");
    let args = [THREADS, BATCH, SIZE, ITERS as i64].map(|v| v.to_string());
    let out = Command::new(python).arg(script).args(&args).output().expect("run python");
    if !out.status.success() {
        println!("PyTorch baseline failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Rounds of (PyTorch, kestrel), interleaved so that both see the same machine state.
const ROUNDS: usize = 3;

fn main() {
    tch::set_num_threads(THREADS as i32);
    let archs = [Arch::Resnet34, Arch::EfficientNetLite0];
    let mut ours = [f64::INFINITY; 2];
    let mut theirs: [Option<f64>; 2] = [None; 2];
    for _ in 0..ROUNDS {
        let torch = torch_best();
        for (i, arch) in archs.iter().enumerate() {
            if let Some(s) = torch.as_ref().and_then(|t| t[arch.name()].as_f64()) {
                theirs[i] = Some(theirs[i].map_or(s, |b| b.min(s)));
            }
            ours[i] = ours[i].min(kestrel_best(*arch));
        }
    }
    println!("inference, {SIZE}x{SIZE}, batch {BATCH}, {THREADS} threads, best of {ITERS} batches x {ROUNDS} interleaved rounds");
    for (i, arch) in archs.iter().enumerate() {
        let ours = BATCH as f64 / ours[i];
        match theirs[i] {
            Some(s) => {
                let theirs = BATCH as f64 / s;
                println!(
                    "{:<20} kestrel {ours:7.1} img/s   PyTorch {theirs:7.1} img/s   ratio {:.3} (target >= 0.95)",
                    arch.name(),
                    ours / theirs
                );
            }
            None => println!("{:<20} kestrel {ours:7.1} img/s", arch.name()),
        }
    }
}
