//! Rebuilding a network from its [`ArchSpec`] and filling it with a model file's weights.

use super::file::read_model_file;
use super::meta::{ArchSpec, ModelMeta};
use crate::models::{Arch, Model, VisionModel};
use crate::models::weights::load_into;
use anyhow::{Context, bail};
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};
use tch::Device;

/// Builds an untrained network on the CPU for an [`ArchSpec`] (weights are loaded after).
pub type BuildFn = Arc<dyn Fn(&ArchSpec) -> crate::Result<Box<dyn Model>> + Send + Sync>;

fn registry() -> &'static RwLock<Vec<(String, BuildFn)>> {
    static REG: OnceLock<RwLock<Vec<(String, BuildFn)>>> = OnceLock::new();
    REG.get_or_init(|| RwLock::new(Vec::new()))
}

/// Makes architecture `name` loadable: [`build_model`] calls `build` for specs with that
/// name. Registering a name again replaces the earlier builder. Use it for architectures
/// defined outside kestrel.
pub fn register_arch(name: &str, build: BuildFn) {
    let mut reg = registry().write().unwrap_or_else(|e| e.into_inner());
    reg.retain(|(n, _)| n != name);
    reg.push((name.to_owned(), build));
}

/// An untrained network for `spec`, on the CPU: a builder registered with
/// [`register_arch`] first, else kestrel's own architectures (`resnet18`…`resnet152`,
/// `efficientnet_lite0`…`4`: body + fastai head with `n_out` outputs, [`VisionModel`]).
///
/// Errors: an architecture name nobody builds (listing the known ones), or the builder's error.
pub fn build_model(spec: &ArchSpec) -> crate::Result<Box<dyn Model>> {
    let found = {
        let reg = registry().read().unwrap_or_else(|e| e.into_inner());
        reg.iter().find(|(n, _)| *n == spec.name).map(|(_, b)| b.clone())
    };
    if let Some(build) = found {
        return build(spec);
    }
    match spec.name.parse::<Arch>() {
        Ok(arch) => Ok(Box::new(VisionModel::new(arch, spec.n_out as i64, Device::Cpu)?)),
        Err(_) => {
            let reg = registry().read().unwrap_or_else(|e| e.into_inner());
            let known: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).chain(reg.iter().map(|(n, _)| n.as_str())).collect();
            bail!("unknown architecture '{}' (this kestrel builds: {})", spec.name, known.join(", "))
        }
    }
}

/// A model loaded from a file, with its metadata.
pub struct LoadedModel {
    /// The file's metadata (architecture, vocabulary, transforms, training summary).
    pub meta: ModelMeta,
    /// The network with the file's weights, in evaluation use (`forward_t(.., false)`).
    pub model: Box<dyn Model>,
}

/// Loads an exported model onto `device` (CPU or CUDA, wherever it was trained; fastai
/// `load_learner(fname, cpu)` for inference).
///
/// Errors: a [`super::ModelFileError`] (truncated, corrupt, checkpoint, newer version,
/// not a kestrel file); an unknown architecture; weights that do not fit the architecture
/// (every missing, unexpected and mis-shaped tensor is listed).
pub fn load_model(path: &Path, device: Device) -> crate::Result<LoadedModel> {
    let file = read_model_file(path)?;
    let mut model = build_model(&file.meta.card.arch)?;
    load_into(model.var_store_mut(), file.tensors.into_iter().collect(), true).with_context(|| {
        format!("{}: architecture '{}' as this kestrel builds it", path.display(), file.meta.card.arch.name)
    })?;
    model.var_store_mut().set_device(device);
    Ok(LoadedModel { meta: file.meta, model })
}
