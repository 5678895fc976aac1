//! A kestrel ONNX model in onnxruntime: finding and loading the runtime library, reading
//! the model's metadata (vocabulary, presize), running batches.

use anyhow::{Context, bail};
use kestrel_image::resize::ItemTfm;
use ort::session::Session;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The onnxruntime library file of the PyPI wheel that kestrel's setup installs.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.32.0";

static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();

/// Where the onnxruntime library is looked for, in order: `explicit` (`--ort-lib` or
/// `ORT_DYLIB_PATH`); [`ORT_LIB_NAME`] or `libonnxruntime.so` beside the executable (a
/// deploy bundle); the kestrel virtual environment's onnxruntime wheel
/// (`$KESTREL_HOME`, else `$XDG_CACHE_HOME/kestrel`, else `~/.cache/kestrel`,
/// `venv-torch-*/lib/python3*/site-packages/onnxruntime/capi/`).
pub fn ort_lib_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_owned()];
    }
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_owned)) {
        out.push(dir.join(ORT_LIB_NAME));
        out.push(dir.join("libonnxruntime.so"));
    }
    let home = std::env::var_os("KESTREL_HOME").map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(|c| PathBuf::from(c).join("kestrel"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kestrel")))
    });
    if let Some(home) = home {
        let mut venvs: Vec<PathBuf> = std::fs::read_dir(&home)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("venv-torch-")))
            .collect();
        venvs.sort();
        for v in venvs.iter().rev() {
            let mut libs: Vec<PathBuf> = std::fs::read_dir(v.join("lib"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("site-packages/onnxruntime/capi").join(ORT_LIB_NAME))
                .collect();
            libs.sort();
            out.extend(libs);
        }
    }
    out
}

/// Loads onnxruntime once per process from the first of [`ort_lib_candidates`] that
/// exists.
///
/// Errors: no candidate exists (listing them, with how to install it), or the library
/// cannot be loaded (e.g. older than 1.31).
pub fn init_runtime(explicit: Option<&Path>) -> anyhow::Result<()> {
    if ENV.get().is_some() {
        return Ok(());
    }
    let candidates = ort_lib_candidates(explicit);
    let Some(lib) = candidates.iter().find(|p| p.is_file()) else {
        bail!(
            "onnxruntime not found (looked for {}); run scripts/setup.sh, or `pip install onnxruntime==1.32.0` \
             and pass its capi/{ORT_LIB_NAME} with --ort-lib or ORT_DYLIB_PATH",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    };
    let env = ort::init_from(lib)
        .with_context(|| format!("cannot load onnxruntime from {}", lib.display()))?
        .with_name("kestrel-serve")
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start onnxruntime: {e}"))?;
    let _ = ENV.set(env);
    Ok(())
}

/// What the ONNX file's metadata says (written by `kestrel export --format onnx`).
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Class names, index order.
    pub vocab: Vec<String>,
    /// The presize: the graph input is `uint8` (N, 3, presize, presize).
    pub presize: u32,
    /// The presizing item transform (fastai `Resize(presize, method, pad_mode)`), as in
    /// kestrel's validation.
    pub item_tfm: ItemTfm,
    /// Architecture name (e.g. `efficientnet_lite0`).
    pub arch: String,
    /// A multi-label model's threshold on its sigmoid outputs (the model file's
    /// `output.thresh`; 0.5 when a sigmoid model names none, as kestrel does); `None` for
    /// softmax models, which answer their top class.
    pub thresh: Option<f64>,
    /// SHA-256 (hex) of the .onnx file.
    pub sha256: String,
}

/// A loaded model: an onnxruntime session and its [`ModelInfo`].
pub struct OnnxModel {
    session: Session,
    /// The metadata.
    pub info: ModelInfo,
}

impl OnnxModel {
    /// Loads the `.onnx` at `path` with `threads` intra-op threads (0: onnxruntime's
    /// default, one per core). Call [`init_runtime`] first.
    ///
    /// Errors: the file cannot be read, onnxruntime refuses it, or its metadata lacks
    /// what kestrel writes (naming the key) — e.g. an ONNX file not exported by kestrel.
    pub fn load(path: &Path, threads: usize) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_bytes(&bytes, path, threads)
    }

    /// [`OnnxModel::load`] for a model held in memory; `path` only names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path, threads: usize) -> anyhow::Result<Self> {
        init_runtime(None)?;
        let env = ENV.get().expect("initialised above");
        let sha256 = hex::encode(Sha256::digest(bytes));
        let ort_err = |e: ort::Error<ort::session::builder::SessionBuilder>| anyhow::anyhow!("{}: {e}", path.display());
        let mut builder = Session::builder(env).map_err(|e| anyhow::anyhow!("{e}"))?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(ort_err)?;
        }
        let session = builder
            .commit_from_memory(bytes)
            .map_err(|e| {
                let hint = if path.extension().is_some_and(|x| x.eq_ignore_ascii_case("safetensors")) {
                    " (a kestrel model file: convert it with `kestrel export MODEL --format onnx`)"
                } else {
                    ""
                };
                anyhow::anyhow!("{}: onnxruntime cannot load it: {e}{hint}", path.display())
            })?;
        let meta = session.metadata().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let get = |key: &str| {
            meta.custom(key).with_context(|| {
                format!("{}: no '{key}' in the ONNX metadata; export the model with `kestrel export MODEL --format onnx`", path.display())
            })
        };
        let vocab: Vec<String> = serde_json::from_str(&get("vocab")?).with_context(|| format!("{}: bad 'vocab' metadata", path.display()))?;
        let presize: u32 = get("presize")?.parse().with_context(|| format!("{}: bad 'presize' metadata", path.display()))?;
        let item_tfm = ItemTfm::presize(presize, &get("resize_method")?, &get("pad_mode")?)?;
        let arch = get("arch")?;
        let card: serde_json::Value =
            serde_json::from_str(&get("kestrel_meta")?).with_context(|| format!("{}: bad 'kestrel_meta' metadata", path.display()))?;
        let thresh = match card["output"]["activation"].as_str() {
            None | Some("softmax") => None,
            Some("sigmoid") => Some(card["output"]["thresh"].as_f64().unwrap_or(0.5)),
            Some(a) => anyhow::bail!("{}: unknown output activation '{a}' in the metadata (softmax or sigmoid)", path.display()),
        };
        drop(meta);
        Ok(Self { session, info: ModelInfo { vocab, presize, item_tfm, arch, thresh, sha256 } })
    }

    /// Softmax probabilities, one row per image, for `n` presized images stacked as
    /// `uint8` (n, 3, presize, presize) in `pixels`.
    ///
    /// Errors: a buffer of the wrong size, or onnxruntime fails.
    pub fn probs(&mut self, pixels: Vec<u8>, n: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        self.run(pixels, n, "probs")
    }

    /// The logits (n rows of C) for the same input as [`OnnxModel::probs`].
    ///
    /// Errors: as [`OnnxModel::probs`].
    pub fn logits(&mut self, pixels: Vec<u8>, n: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        self.run(pixels, n, "logits")
    }

    fn run(&mut self, pixels: Vec<u8>, n: usize, output: &str) -> anyhow::Result<Vec<Vec<f32>>> {
        let p = self.info.presize as usize;
        if pixels.len() != n * 3 * p * p {
            bail!("{} bytes for {n} images of 3x{p}x{p}", pixels.len());
        }
        let input = ort::value::Tensor::from_array(([n, 3, p, p], pixels)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let outputs = self.session.run(ort::inputs!["image" => input]).map_err(|e| anyhow::anyhow!("onnxruntime: {e}"))?;
        let (_, values) = outputs[output].try_extract_tensor::<f32>().map_err(|e| anyhow::anyhow!("{e}"))?;
        let c = self.info.vocab.len();
        if values.len() != n * c {
            bail!("the model returned {} values for {n} images of {c} classes", values.len());
        }
        Ok(values.chunks_exact(c).map(<[f32]>::to_vec).collect())
    }
}

/// Decodes an encoded photo and presizes it as kestrel's validation does; returns the
/// planar `uint8` (3, presize, presize) pixels.
///
/// Errors: the decoder's (empty, unknown format, truncated, over the limits), naming
/// what is wrong.
pub fn preprocess(bytes: &[u8], tfm: &ItemTfm, limits: &kestrel_image::decode::DecodeLimits) -> anyhow::Result<Vec<u8>> {
    use rand::SeedableRng;
    let (img, _) = kestrel_image::decode::decode_bytes_limited(bytes, limits)?;
    let img = tfm.apply(&img, false, &mut rand::rngs::StdRng::seed_from_u64(0))?;
    Ok(kestrel_image::hwc_to_chw(img.as_raw(), (img.width() * img.height()) as usize))
}
