//! What a kestrel model file says about itself: architecture, vocabulary, inference
//! transforms and a training summary — plain data (JSON), never code.

use crate::transforms::{AugTransforms, Interpolation, PadMode};
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
    #[serde(default)]
    pub augment: Option<AugSpec>,
}

fn reflection() -> String {
    "reflection".to_owned()
}

/// [`AugTransforms`] as stored in a model file (plain JSON; the enums as lower-case names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugSpec {
    /// `min_scale` of the random-resized crop.
    pub min_scale: f64,
    /// Random horizontal flip.
    pub do_flip: bool,
    /// Dihedral instead of horizontal flip.
    pub flip_vert: bool,
    /// Maximum rotation, degrees.
    pub max_rotate: f64,
    /// Minimum zoom.
    pub min_zoom: f64,
    /// Maximum zoom.
    pub max_zoom: f64,
    /// Maximum perspective warp.
    pub max_warp: f64,
    /// Maximum brightness/contrast change.
    pub max_lighting: f64,
    /// Probability of each affine transform.
    pub p_affine: f64,
    /// Probability of each lighting transform.
    pub p_lighting: f64,
    /// `bilinear`, `nearest` or `bicubic`.
    pub mode: String,
    /// `zeros`, `border` or `reflection`.
    pub pad_mode: String,
    /// PyTorch `align_corners`.
    pub align_corners: bool,
    /// Multiplier of `max_rotate`, `max_lighting`, `max_warp`.
    pub mult: f64,
    /// One draw per batch instead of per image.
    pub batch: bool,
}

impl From<&AugTransforms> for AugSpec {
    fn from(a: &AugTransforms) -> Self {
        Self {
            min_scale: a.min_scale,
            do_flip: a.do_flip,
            flip_vert: a.flip_vert,
            max_rotate: a.max_rotate,
            min_zoom: a.min_zoom,
            max_zoom: a.max_zoom,
            max_warp: a.max_warp,
            max_lighting: a.max_lighting,
            p_affine: a.p_affine,
            p_lighting: a.p_lighting,
            mode: format!("{:?}", a.mode).to_lowercase(),
            pad_mode: format!("{:?}", a.pad_mode).to_lowercase(),
            align_corners: a.align_corners,
            mult: a.mult,
            batch: a.batch,
        }
    }
}

impl AugSpec {
    /// The [`AugTransforms`] it describes, for output side `size`.
    ///
    /// Errors: an unknown interpolation or padding name.
    pub fn to_aug(&self, size: i64) -> crate::Result<AugTransforms> {
        let mode = match self.mode.as_str() {
            "bilinear" => Interpolation::Bilinear,
            "nearest" => Interpolation::Nearest,
            "bicubic" => Interpolation::Bicubic,
            m => anyhow::bail!("unknown interpolation '{m}' in the model file's augmentation"),
        };
        let pad_mode = match self.pad_mode.as_str() {
            "zeros" => PadMode::Zeros,
            "border" => PadMode::Border,
            "reflection" => PadMode::Reflection,
            m => anyhow::bail!("unknown padding mode '{m}' in the model file's augmentation"),
        };
        Ok(AugTransforms {
            size: Some(size),
            min_scale: self.min_scale,
            do_flip: self.do_flip,
            flip_vert: self.flip_vert,
            max_rotate: self.max_rotate,
            min_zoom: self.min_zoom,
            max_zoom: self.max_zoom,
            max_warp: self.max_warp,
            max_lighting: self.max_lighting,
            p_affine: self.p_affine,
            p_lighting: self.p_lighting,
            mode,
            pad_mode,
            align_corners: self.align_corners,
            mult: self.mult,
            batch: self.batch,
        })
    }
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
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}
