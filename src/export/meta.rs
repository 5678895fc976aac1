//! What a kestrel model file says about itself: architecture, vocabulary, inference
//! transforms and a training summary — plain data (JSON), never code.

use crate::transforms::AugTransforms;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Value of the safetensors metadata key [`FORMAT_KEY`] in an exported model.
pub const FORMAT_MODEL: &str = "model";
/// Value of [`FORMAT_KEY`] in a training checkpoint (written by the Learner's `save`).
pub const FORMAT_CHECKPOINT: &str = "checkpoint";
/// Safetensors metadata key naming what a kestrel file is ([`FORMAT_MODEL`] or
/// [`FORMAT_CHECKPOINT`]).
pub const FORMAT_KEY: &str = "kestrel_format";
/// Safetensors metadata key holding the format version (a decimal integer).
pub const VERSION_KEY: &str = "kestrel_format_version";
/// Safetensors metadata key holding [`ModelMeta`] as a JSON string.
pub const META_KEY: &str = "kestrel_meta";
/// The model format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The architecture and its hyper-parameters: enough to rebuild the network before its
/// weights are loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchSpec {
    /// Architecture name as `--arch` spells it, e.g. `resnet34`, `efficientnet_lite0`.
    pub name: String,
    /// Number of outputs of the head (= number of classes).
    pub n_out: usize,
    /// Further hyper-parameters of the builder (e.g. the fastai head's `lin_ftrs`, `ps`,
    /// `concat_pool`), as the architecture's constructor defines them. `null` when none.
    #[serde(default)]
    pub hyper: serde_json::Value,
}

/// The deterministic (validation-time) preprocessing a model expects, fastai's item and
/// batch transforms of the validation set: decode → `Resize(presize, method)` (centre crop
/// for `crop`) → resize to `size` (batch transform, validation mode) → `Normalize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceTransforms {
    /// Item resize (fastai presizing, `Resize(460)` in the book), pixels, square.
    pub presize: u32,
    /// Model input size after the batch transforms, pixels, square (e.g. 224).
    pub size: u32,
    /// Item resize method: `crop`, `pad` or `squish` (fastai `ResizeMethod`).
    pub resize_method: String,
    /// Padding of `pad`: `zeros`, `reflection` (fastai's default) or `border`.
    #[serde(default = "reflection")]
    pub pad_mode: String,
    /// Per-channel mean subtracted after scaling pixels to 0..=1 (RGB).
    pub mean: [f64; 3],
    /// Per-channel standard deviation divided by after subtracting `mean` (RGB).
    pub std: [f64; 3],
    /// The training batch augmentation (fastai `aug_transforms` arguments): decides the
    /// validation resize (a centred square crop first when `min_scale` < 1) and drives
    /// test-time augmentation. `None` when the model was trained without augmentation.
    /// Stored as JSON with `AugTransforms`' field names, the enums in lower case
    /// (`"mode": "bilinear"`, `"pad_mode": "reflection"`).
    #[serde(default)]
    pub augment: Option<AugTransforms>,
}

fn reflection() -> String {
    "reflection".to_owned()
}

/// A short summary of how the model was trained (shown by `kestrel predict --info`-like
/// tools and in reports; not needed to run the model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainingSummary {
    /// Epochs trained in total (frozen + unfrozen for `fine_tune`).
    pub epochs: usize,
    /// Final validation metrics by name (e.g. `valid_loss`, `error_rate`).
    pub metrics: BTreeMap<String, f64>,
    /// UTC date and time the model was exported, ISO 8601 (`2026-11-30T01:02:03Z`).
    pub date: String,
    /// Numeric precision of the training (`fp32`, `bf16` autocast or `fp16` autocast;
    /// `--precision auto` depends on the machine). `None` in files that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

/// The activation of the model's outputs (fastai: the loss function's `activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Single-label: softmax over the classes, the prediction is the argmax
    /// (`CrossEntropyLossFlat`). Files written before this field existed are softmax.
    #[default]
    Softmax,
    /// Multi-label: an independent sigmoid per label, the prediction is every label above
    /// the threshold, possibly none (`BCEWithLogitsLossFlat`).
    Sigmoid,
}

/// How the outputs become a prediction: the activation and, for multi-label models,
/// the decision threshold. Stored in the model file so inference (and an exported ONNX
/// graph) applies the same rule as the validation metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct OutputSpec {
    /// Softmax (single-label) or sigmoid (multi-label).
    pub activation: Activation,
    /// Multi-label decision threshold on the sigmoid, in (0, 1) (fastai `thresh`; the book
    /// uses 0.2). `None` for softmax models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresh: Option<f64>,
    /// Where the threshold comes from, e.g. "--thresh 0.2" or "chosen on the validation
    /// set (370 photos) by F1 (samples)": metrics on that set are then optimistic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresh_source: Option<String>,
}

/// Everything the caller tells [`super::export`] about a model besides its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// How to rebuild the network.
    pub arch: ArchSpec,
    /// Class names in index order (the `CategoryMap`'s items).
    pub vocab: Vec<String>,
    /// The validation-time preprocessing.
    pub transforms: InferenceTransforms,
    /// How it was trained, when known.
    pub training: Option<TrainingSummary>,
    /// Activation and decision rule of the outputs (softmax when absent from the file).
    #[serde(default)]
    pub output: OutputSpec,
    /// Temperature scaling fitted on the validation set: [`super::Predictor`] divides the
    /// logits by `temperature` before the softmax. `None` (or absent in files written
    /// before it existed): plain softmax. An ONNX export carries it as a division of the
    /// logits by the same constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

/// Temperature scaling of a model's probabilities (Guo et al. 2017): probabilities are
/// `softmax(logits / temperature)`. Written by `kestrel fine-tune`, with the expected
/// calibration error (15 bins) and negative log-likelihood (natural log, per item) of the
/// validation set before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// T > 0: the logits are divided by it (T > 1 softens over-confident probabilities).
    pub temperature: f64,
    /// Validation items T was fitted on.
    pub n_fitted: usize,
    /// ECE of the plain softmax, in [0, 1].
    pub ece_before: f64,
    /// ECE after scaling, measured on the items T was fitted on (optimistic).
    pub ece_after: f64,
    /// Mean NLL of the plain softmax.
    pub nll_before: f64,
    /// Mean NLL after scaling, on the items T was fitted on.
    pub nll_after: f64,
    /// ECE after scaling with 2-fold cross-fitting (T fitted on one half, measured on the other).
    pub ece_after_crossfit: f64,
    /// NLL after scaling with 2-fold cross-fitting.
    pub nll_after_crossfit: f64,
}

/// The JSON stored under [`META_KEY`]: the [`ModelCard`] plus what the writer adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// The card as given to `export`.
    #[serde(flatten)]
    pub card: ModelCard,
    /// The kestrel version that wrote the file (`CARGO_PKG_VERSION`).
    pub kestrel_version: String,
    /// SHA-256 (hex) of the weights: each tensor's raw little-endian bytes, in name order.
    /// Checked on load, so a damaged file is reported as corrupt.
    pub weights_sha256: String,
}

/// The current UTC time as ISO 8601 (`YYYY-MM-DDTHH:MM:SSZ`), for [`TrainingSummary::date`].
pub fn utc_now_iso8601() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
