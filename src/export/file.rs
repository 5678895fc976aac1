//! The model file: one safetensors file whose weights are the model's `VarStore` and whose
//! `__metadata__` holds [`ModelMeta`] as JSON. Reading it classifies every failure.

use super::meta::{
    FORMAT_CHECKPOINT, FORMAT_KEY, FORMAT_MODEL, FORMAT_VERSION, META_KEY, ModelCard, ModelMeta, VERSION_KEY,
};
use crate::models::Model;
use crate::models::weights::{dtype_of, kind_of};
use anyhow::Context;
use safetensors::{Dtype, SafeTensors, View};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Why a file is not a loadable kestrel model. Returned inside the [`anyhow::Error`] of
/// [`read_model_file`] / [`super::load_model`]; match it with `err.downcast_ref()`.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    /// The file ends before the data its header announces (an interrupted copy or download).
    #[error("{path}: the model file is truncated: {detail}; copy or export it again")]
    Truncated { path: PathBuf, detail: String },
    /// The bytes are damaged: unreadable header, inconsistent offsets, or weights whose
    /// checksum does not match the one recorded at export.
    #[error("{path}: the model file is corrupt: {detail}; export it again")]
    Corrupt { path: PathBuf, detail: String },
    /// A training checkpoint (Learner `save`), not an exported model.
    #[error(
        "{path} is a kestrel training checkpoint, not an exported model: resume training from it, \
         or load it into a Learner and export the model"
    )]
    Checkpoint { path: PathBuf },
    /// Written by a newer kestrel whose model format this build cannot read.
    #[error(
        "{path} uses kestrel model format version {found}, newer than version {supported} that \
         this kestrel {} reads; upgrade kestrel",
        env!("CARGO_PKG_VERSION")
    )]
    NewerVersion { path: PathBuf, found: u32, supported: u32 },
    /// Some other file: not safetensors at all, or safetensors without kestrel metadata
    /// (e.g. bare weights, which `--weights` takes).
    #[error("{path} is not a kestrel model file: {detail}")]
    NotKestrel { path: PathBuf, detail: String },
}

/// The raw content of a model file, checked and classified: metadata plus named tensors
/// (on the CPU).
pub struct ModelFile {
    /// The file's metadata.
    pub meta: ModelMeta,
    /// Every tensor of the file by name, on the CPU, with its stored kind.
    pub tensors: HashMap<String, Tensor>,
}

/// Writes `model`'s variables and `card` to `path` atomically (temp file + rename).
/// Tensors are copied to the CPU; floating-point and integer kinds are kept as they are.
///
/// Errors: a variable of a kind safetensors cannot store, or the file cannot be written.
pub fn write_model_file(path: &Path, model: &dyn Model, card: &ModelCard) -> crate::Result<()> {
    let vars = model.var_store().variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut views = Vec::with_capacity(names.len());
    let mut hasher = Sha256::new();
    for name in names {
        let view = CpuTensor::new(&vars[name]).with_context(|| format!("variable {name}"))?;
        hasher.update(&view.bytes);
        views.push((name.clone(), view));
    }
    let meta = ModelMeta {
        card: card.clone(),
        kestrel_version: env!("CARGO_PKG_VERSION").to_owned(),
        weights_sha256: hex::encode(hasher.finalize()),
    };
    let header: HashMap<String, String> = [
        (FORMAT_KEY.to_owned(), FORMAT_MODEL.to_owned()),
        (VERSION_KEY.to_owned(), FORMAT_VERSION.to_string()),
        (META_KEY.to_owned(), serde_json::to_string(&meta)?),
    ]
    .into();
    let bytes = safetensors::serialize(views, &Some(header))
        .with_context(|| format!("cannot serialise the model for {}", path.display()))?;
    crate::util::atomic::write_atomic(path, &bytes)
}

/// Reads and checks a model file; see [`ModelFileError`] for how failures are classified.
///
/// Errors: the file cannot be opened (I/O error naming it), or a [`ModelFileError`].
pub fn read_model_file(path: &Path) -> crate::Result<ModelFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read model file {}", path.display()))?;
    model_file_from_bytes(path, &bytes)
}

/// [`read_model_file`] for a file's content already in memory; `path` only names it in
/// errors.
///
/// Errors: a [`ModelFileError`].
pub fn model_file_from_bytes(path: &Path, bytes: &[u8]) -> crate::Result<ModelFile> {
    let (header, st) = parse(path, bytes)?;
    let meta = check_header(path, &header)?;
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let mut hasher = Sha256::new();
    let mut tensors = HashMap::with_capacity(names.len());
    for name in names {
        let view = st.tensor(&name).map_err(|e| corrupt(path, format!("tensor {name}: {e}")))?;
        hasher.update(view.data());
        let kind = kind_of(view.dtype()).ok_or_else(|| corrupt(path, format!("tensor {name} has unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| corrupt(path, format!("tensor {name}: {e}")))?;
        tensors.insert(name, t);
    }
    let sha = hex::encode(hasher.finalize());
    if sha != meta.weights_sha256 {
        return Err(corrupt(path, format!("the weights' SHA-256 is {sha}, but {} was recorded at export", meta.weights_sha256)).into());
    }
    Ok(ModelFile { meta, tensors })
}

/// Reads only the metadata of a model file (fast: the weights are not checked).
///
/// Errors: as [`read_model_file`], except that damaged weights go unnoticed.
pub fn read_model_meta(path: &Path) -> crate::Result<ModelMeta> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read model file {}", path.display()))?;
    model_meta_from_bytes(path, &bytes)
}

/// [`read_model_meta`] for a file's content already in memory; `path` only names it in
/// errors.
///
/// Errors: a [`ModelFileError`].
pub fn model_meta_from_bytes(path: &Path, bytes: &[u8]) -> crate::Result<ModelMeta> {
    let (header, _) = parse(path, bytes)?;
    Ok(check_header(path, &header)?)
}

fn corrupt(path: &Path, detail: impl Into<String>) -> ModelFileError {
    ModelFileError::Corrupt { path: path.to_owned(), detail: detail.into() }
}

/// Splits the safetensors layout (8-byte little-endian header length, JSON header, data)
/// and tells truncation from corruption from a foreign format.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(HashMap<String, String>, SafeTensors<'a>), ModelFileError> {
    let p = || path.to_owned();
    if bytes.is_empty() {
        return Err(ModelFileError::Truncated { path: p(), detail: "the file is empty".into() });
    }
    if bytes.starts_with(b"PK\x03\x04") && contains(bytes, CHECKPOINT_MARK) {
        return Err(ModelFileError::Checkpoint { path: p() });
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&[0x80, 0x02]) {
        return Err(ModelFileError::NotKestrel {
            path: p(),
            detail: "it is a PyTorch/pickle file (e.g. a .pth state dict); kestrel models are safetensors files written by `export`".into(),
        });
    }
    if bytes.len() < 8 {
        return Err(ModelFileError::Truncated { path: p(), detail: format!("only {} bytes", bytes.len()) });
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let looks_json = bytes.get(8) == Some(&b'{');
    if !looks_json || !(2..=100_000_000).contains(&n) {
        return Err(if looks_json {
            corrupt(path, format!("the header length field says {n} bytes"))
        } else {
            let onnx = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
            let detail = if onnx {
                "it is an ONNX file (kestrel-serve runs those; kestrel reads the model.safetensors that fine-tune wrote)"
            } else {
                "it does not start with a safetensors header"
            };
            ModelFileError::NotKestrel { path: p(), detail: detail.into() }
        });
    }
    if bytes.len() < 8 + n {
        return Err(ModelFileError::Truncated {
            path: p(),
            detail: format!("the header needs {} bytes, the file has {}", 8 + n, bytes.len()),
        });
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| corrupt(path, format!("the header is not valid JSON ({e})")))?;
    let obj = value.as_object().ok_or_else(|| corrupt(path, "the header is not a JSON object"))?;
    let header: HashMap<String, String> = match obj.get("__metadata__") {
        Some(m) => serde_json::from_value(m.clone()).map_err(|e| corrupt(path, format!("bad __metadata__ ({e})")))?,
        None => HashMap::new(),
    };
    let end = obj
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0) as usize;
    let have = bytes.len() - 8 - n;
    if have < end {
        return Err(ModelFileError::Truncated {
            path: p(),
            detail: format!("the weights need {} bytes, the file has {} ({} missing)", 8 + n + end, bytes.len(), end - have),
        });
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(path, format!("{e:?}")))?;
    Ok((header, st))
}

/// What the Learner's checkpoints (libtorch archives, `Learner::save`) carry in their
/// uncompressed `meta` entry: `"format":"kestrel-checkpoint-N"`.
const CHECKPOINT_MARK: &[u8] = b"kestrel-checkpoint";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn check_header(path: &Path, header: &HashMap<String, String>) -> Result<ModelMeta, ModelFileError> {
    let p = || path.to_owned();
    match header.get(FORMAT_KEY).map(String::as_str) {
        Some(FORMAT_MODEL) => {}
        Some(FORMAT_CHECKPOINT) => return Err(ModelFileError::Checkpoint { path: p() }),
        Some(other) => {
            return Err(ModelFileError::NotKestrel { path: p(), detail: format!("its {FORMAT_KEY} is '{other}'") });
        }
        None => {
            return Err(ModelFileError::NotKestrel {
                path: p(),
                detail: "a safetensors file without kestrel metadata (bare weights? load those with --weights)".into(),
            });
        }
    }
    let version = header.get(VERSION_KEY).ok_or_else(|| corrupt(path, format!("no {VERSION_KEY} in the metadata")))?;
    let found: u32 = version.parse().map_err(|_| corrupt(path, format!("{VERSION_KEY} '{version}' is not a number")))?;
    if found > FORMAT_VERSION {
        return Err(ModelFileError::NewerVersion { path: p(), found, supported: FORMAT_VERSION });
    }
    let json = header.get(META_KEY).ok_or_else(|| corrupt(path, format!("no {META_KEY} in the metadata")))?;
    serde_json::from_str(json).map_err(|e| corrupt(path, format!("{META_KEY} is not valid model metadata ({e})")))
}

/// A tensor's bytes on the CPU, as safetensors wants them.
struct CpuTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl CpuTensor {
    fn new(t: &Tensor) -> crate::Result<Self> {
        let kind = t.kind();
        let dtype = dtype_of(kind).with_context(|| format!("kind {kind:?} cannot be stored"))?;
        let t = t.detach().to_device(tch::Device::Cpu).contiguous();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        Ok(Self { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), bytes })
    }
}

impl View for CpuTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
