//! Export and inference (fastai `learn.export`, `load_learner`, `learn.predict`): ONE
//! self-contained safetensors file with the weights and JSON metadata — architecture,
//! vocabulary, inference transforms, kestrel version, training summary — that any kestrel
//! program loads on the CPU or a GPU. Nothing in the file is code.
//!
//! Layout: a standard safetensors file; its `__metadata__` has `kestrel_format` =
//! `"model"` (training checkpoints say `"checkpoint"`), `kestrel_format_version` and
//! `kestrel_meta` (the [`ModelMeta`] JSON). Any safetensors reader can read the weights.

mod build;
mod file;
mod meta;
pub mod onnx;
mod predictor;
mod preprocess;

pub use onnx::export_onnx;
pub use build::{BuildFn, LoadedModel, build_model, load_model, register_arch};
pub use file::{ModelFile, ModelFileError, model_file_from_bytes, model_meta_from_bytes, read_model_file, read_model_meta};
pub use meta::{
    Activation, ArchSpec, Calibration, FORMAT_CHECKPOINT, FORMAT_KEY, FORMAT_MODEL, FORMAT_VERSION, InferenceTransforms, META_KEY, ModelCard,
    ModelMeta, OutputSpec, TrainingSummary, VERSION_KEY, utc_now_iso8601,
};

pub(crate) use predictor::argmax;
pub use predictor::{Prediction, Predictor, TtaOptions, expand_image_paths, tta_combine};
pub use preprocess::{item_tfm, to_batch};

use crate::models::Model;
use std::path::Path;

/// Exports `model` with `card` to `path` as one self-contained file, atomically (fastai
/// `Learner.export`). Load it with [`load_model`] or `Predictor::load`.
///
/// Errors: a variable of a kind safetensors cannot store; the file cannot be written.
pub fn export(path: &Path, model: &dyn Model, card: &ModelCard) -> crate::Result<()> {
    file::write_model_file(path, model, card)
}
