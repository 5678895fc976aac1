//! Batch prediction throughput (images/s) of an exported EfficientNet-Lite0 (+ fastai head,
//! 37 classes) over the pet sample photos with 2 threads — decode, `Resize(460)`, resize to
//! 224, normalise, model, softmax: `Predictor::predict_files`, the code `kestrel predict
//! MODEL PATH...` runs — against the reference PyTorch model (efficientnet-lite-pytorch +
//! fastai's `create_head`) doing the same work in Python with 2 threads
//! (`scripts/ref/interpret_bench.py`), in the same run. Prints both and the ratio.
//!
//! `cargo bench --bench interpret`; `KESTREL_BENCH_LIMIT=N` uses the first N photos only.

use kestrel::export::{self, ArchSpec, InferenceTransforms, ModelCard, Predictor};
use kestrel::models::{Arch, VisionModel};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use tch::Device;


fn main() -> kestrel::Result<()> {
    let Some(pets) = kestrel::util::testdata::pets_sample_or_skip("bench interpret") else { return Ok(()) };
    let limit: usize = std::env::var("KESTREL_BENCH_LIMIT").ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
    let threads = 2;
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let images = pets.join("images");
    let mut paths = kestrel::data::get_image_files(&images, false)?.files;
    paths.truncate(limit);
    let mut vocab: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_stem()?.to_str()?.rsplit_once('_').map(|(b, _)| b.to_owned()))
        .collect();
    vocab.sort();
    vocab.dedup();
    let model = VisionModel::new(Arch::EfficientNetLite0, vocab.len() as i64, Device::Cpu)?;
    let norm = Arch::EfficientNetLite0.normalization();
    let card = ModelCard {
        arch: ArchSpec { name: "efficientnet_lite0".into(), n_out: vocab.len(), hyper: serde_json::Value::Null },
        vocab,
        transforms: InferenceTransforms {
            presize: 460,
            size: 224,
            resize_method: "crop".into(),
            pad_mode: "reflection".into(),
            mean: norm.mean.map(f64::from),
            std: norm.std.map(f64::from),
            augment: Some(kestrel::transforms::aug_transforms().with_min_scale(0.75)),
        },
        training: None,
        output: Default::default(),
        calibration: None,
    };
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("lite0.safetensors");
    export::export(&file, &model, &card)?;
    let predictor = Predictor::load(&file, Device::Cpu)?;
    // Warm-up (allocator, kernels), then the timed pass.
    predictor.predict_files(&paths[..paths.len().min(16)], 64, threads);
    let t = Instant::now();
    let res = predictor.predict_files(&paths, 64, threads);
    let secs = t.elapsed().as_secs_f64();
    let ok = res.iter().filter(|r| r.is_ok()).count();
    let kestrel_ips = paths.len() as f64 / secs;
    println!("kestrel predict (Lite0, 2 threads): {} photos ({ok} ok) in {secs:.2} s = {kestrel_ips:.2} images/s", paths.len());

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ref/interpret_bench.py");
    let Some(ref_python) = kestrel::util::testdata::venv_python("ref-venv") else {
        println!("skipped the baseline: the reference venv (scripts/ref/make-venv.sh) is not on this machine");
        return Ok(());
    };
    let out = Command::new(ref_python)
        .arg(&script)
        .arg(&images)
        .arg(threads.to_string())
        .arg(paths.len().to_string())
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()?;
    anyhow::ensure!(out.status.success(), "the Python baseline failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or(""))?;
    let py_ips = v["images_per_s"].as_f64().unwrap_or(f64::NAN);
    println!("PyTorch reference (Lite0 + fastai head, DataLoader with 2 workers, 2 threads): {py_ips:.2} images/s");
    println!("ratio kestrel / PyTorch: {:.2}", kestrel_ips / py_ips);
    Ok(())
}
