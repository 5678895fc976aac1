//! ONNX export of a kestrel model (`kestrel export MODEL --format onnx`): opset 17, IR 8,
//! a dynamic batch dimension, and everything a client needs in `metadata_props`.
//!
//! Graph: input `image`, `uint8` (N, 3, presize, presize) RGB — the photo decoded (EXIF
//! orientation applied) and presized as [`PREPROCESS_DOC`] says; inside the graph the
//! rest of kestrel's validation path (the bilinear resample presize → size that
//! `BatchTfms` does with `grid_sample`, ÷255 and normalisation), the network in
//! evaluation mode (BatchNorm folded into the convolutions and linear layers, Dropout
//! left out, ReLU6 as `Clip`, fastai's `AdaptiveConcatPool2d` as GlobalMaxPool +
//! GlobalAveragePool + Concat, max first); outputs `logits` (N, C) and `probs` (N, C,
//! softmax). A client therefore only decodes and applies one documented resize: no
//! preprocessing drift between training and deployment.
//!
//! Metadata keys (all strings): `kestrel_meta` (the model file's whole [`ModelMeta`]
//! JSON, so what later versions add to the model card travels too), `vocab` (JSON array),
//! `arch`, `presize`, `size`, `resize_method`, `pad_mode`, `mean`, `std` (JSON arrays,
//! already applied in the graph), `input`, `outputs`, `preprocess` (the client's step in
//! words), `kestrel_version`, `training` (JSON, or `null`).

mod graph;
mod net;
pub mod proto;

use super::meta::{Activation, ModelCard, ModelMeta};
use crate::models::{Arch, Model};
use crate::transforms::affine::image_map;
use crate::transforms::{BatchTfms, Normalize};
use crate::util::rng::seeded;
use anyhow::Context;
use graph::{Dim, GraphBuilder};
use net::{Emitter, Weights};
use prost::Message;
use proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto, data_type};
use std::path::Path;

/// ONNX opset the export targets.
pub const OPSET: i64 = 17;
/// ONNX IR version of the files written (IR 8 goes with opset 17).
pub const IR_VERSION: i64 = 8;
/// Name of the graph input: `uint8` (N, 3, presize, presize).
pub const INPUT: &str = "image";
/// Name of the output with the logits (N, C) `f32`.
pub const LOGITS: &str = "logits";
/// Name of the output with the probabilities (N, C) `f32`: softmax of the logits divided by
/// the calibration temperature, or the sigmoid of a multi-label model.
pub const PROBS: &str = "probs";

/// The `outputs` metadata entry: the two outputs and how `probs` follows from the logits
/// (softmax, over the calibration temperature when fitted; or a multi-label model's
/// sigmoid and the threshold that picks its labels).
fn outputs_doc(c: &ModelCard) -> String {
    let n = c.vocab.len();
    let probs = match (c.output.activation, &c.calibration) {
        (Activation::Sigmoid, _) => format!(
            "sigmoid of the logits, one independent probability per label (multi-label: the labels are every class with probs above {}, possibly none)",
            c.output.thresh.unwrap_or(0.5)
        ),
        (Activation::Softmax, Some(cal)) => format!("softmax of the logits divided by the calibration temperature {}", cal.temperature),
        (Activation::Softmax, None) => "softmax of the logits".to_string(),
    };
    format!("{LOGITS}: float32 (N, {n}); {PROBS}: float32 (N, {n}), {probs}")
}

/// What a client does before feeding `image`, as stored under the `preprocess` key.
pub const PREPROCESS_DOC: &str = "Decode the photo to 8-bit RGB with its EXIF orientation applied \
(grayscale/palette expanded, alpha dropped, 16-bit scaled to 8-bit). Then fastai Resize(presize, \
method=resize_method): crop = take the centred largest region of aspect 1 (a square of the shorter \
side; its offset is floor(0.5 * (long side - short side))), pad = pad to a square (pad_mode), squish \
= the whole photo; resize that region to presize x presize with antialiased bilinear filtering \
(PIL Image.resize(..., BILINEAR)). Feed uint8 (N, 3, presize, presize) RGB, channels first. The \
graph does the rest: bilinear resample to size, /255 and normalisation with mean/std.";

/// The ONNX model of `model` (a kestrel vision model: ResNet-18…152 or
/// EfficientNet-Lite0…4 with fastai's head) described by `meta`, in evaluation mode.
///
/// Errors: an architecture that is not one of kestrel's vision models; transforms the
/// graph cannot express (a non-bilinear sampling mode); a variable missing or mis-shaped.
pub fn onnx_model(model: &dyn Model, meta: &ModelMeta) -> crate::Result<ModelProto> {
    let card = &meta.card;
    let arch: Arch = card.arch.name.parse().map_err(|_| {
        anyhow::anyhow!(
            "the ONNX export supports kestrel's vision models ({}), not architecture '{}'",
            Arch::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "),
            card.arch.name
        )
    })?;
    let t = &card.transforms;
    let (presize, size) = (t.presize as i64, t.size as i64);
    let aug = t.augment.clone().map(|a| a.with_size(size));
    let valid = BatchTfms::new(aug, size, Normalize::from_stats(t.mean, t.std)?)?;
    let params = valid.params(1, presize, presize, false, &mut seeded(0));
    let map = image_map(&params[0], presize, presize);
    let weights = Weights(model.var_store().variables());
    let mut g = GraphBuilder::default();
    let mut e = Emitter { g: &mut g, w: &weights };
    let x = e.preprocess(INPUT, presize, size, &map, valid.sampling(), t.mean, t.std)?;
    let x = e.body(arch, &x, size)?;
    e.head(&x, LOGITS)?;
    // `probs` as kestrel's Predictor computes them: the logits divided by the calibration
    // temperature when the model file has one, then softmax (or the sigmoid of a
    // multi-label model, whose threshold travels in the metadata).
    let scaled = match &card.calibration {
        Some(c) => {
            let t = g.float("temperature", &[], &[c.temperature as f32]);
            g.node("Div", &[LOGITS, &t], vec![], None)
        }
        None => LOGITS.to_string(),
    };
    match card.output.activation {
        crate::export::Activation::Softmax => g.node("Softmax", &[&scaled], vec![("axis", graph::Attr::Int(-1))], Some(PROBS)),
        crate::export::Activation::Sigmoid => g.node("Sigmoid", &[&scaled], vec![], Some(PROBS)),
    };
    let n = card.vocab.len() as i64;
    let graph = g.finish(
        "kestrel",
        &[(INPUT, data_type::UINT8, vec![Dim::Param("batch"), Dim::Fixed(3), Dim::Fixed(presize), Dim::Fixed(presize)])],
        &[
            (LOGITS, data_type::FLOAT, vec![Dim::Param("batch"), Dim::Fixed(n)]),
            (PROBS, data_type::FLOAT, vec![Dim::Param("batch"), Dim::Fixed(n)]),
        ],
    );
    Ok(ModelProto {
        ir_version: IR_VERSION,
        producer_name: "kestrel".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "kestrel".into(),
        model_version: 1,
        doc_string: format!("{} image classifier with {n} classes, exported by kestrel", card.arch.name),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props: metadata(meta)?,
    })
}

fn metadata(meta: &ModelMeta) -> crate::Result<Vec<StringStringEntryProto>> {
    let c = &meta.card;
    let t = &c.transforms;
    let props = [
        ("kestrel_meta", serde_json::to_string(meta)?),
        ("vocab", serde_json::to_string(&c.vocab)?),
        ("arch", c.arch.name.clone()),
        ("presize", t.presize.to_string()),
        ("size", t.size.to_string()),
        ("resize_method", t.resize_method.clone()),
        ("pad_mode", t.pad_mode.clone()),
        ("mean", serde_json::to_string(&t.mean)?),
        ("std", serde_json::to_string(&t.std)?),
        ("input", format!("{INPUT}: uint8 (N, 3, {0}, {0}) RGB 0..255, channels first", t.presize)),
        ("outputs", outputs_doc(c)),
        ("preprocess", PREPROCESS_DOC.to_owned()),
        ("kestrel_version", meta.kestrel_version.clone()),
        ("training", serde_json::to_string(&c.training)?),
    ];
    Ok(props.into_iter().map(|(k, v)| StringStringEntryProto { key: k.to_owned(), value: v }).collect())
}

/// Writes the ONNX model of `model` (see [`onnx_model`]) to `path` atomically.
///
/// Errors: as [`onnx_model`], or the file cannot be written.
pub fn export_onnx(path: &Path, model: &dyn Model, meta: &ModelMeta) -> crate::Result<()> {
    let bytes = onnx_model(model, meta)?.encode_to_vec();
    crate::util::atomic::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}
