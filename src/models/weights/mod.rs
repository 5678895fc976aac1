//! Weight files: PyTorch `.pth`/`.pt` (zip and legacy layouts) and safetensors, read into
//! `(name, tensor)` lists without executing anything from the file, and loaded into a
//! `tch::nn::VarStore` with PyTorch's `load_state_dict(strict=...)` checks.
//!
//! ```no_run
//! # fn main() -> kestrel::Result<()> {
//! use kestrel::models::weights::{load_state_dict, load_into, map_names};
//! let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
//! // ... build the network under vs.root() ...
//! let sd = load_state_dict("resnet34-b627a593.pth".as_ref())?;
//! let sd = map_names(sd, |n| Some(format!("0.{n}"))); // e.g. the body lives under "0."
//! let report = load_into(&mut vs, sd, false)?;
//! println!("{report}");
//! # Ok(()) }
//! ```

mod pickle;
mod pth;
mod safetensors;
mod torch_objects;

use anyhow::{anyhow, bail};
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use tch::{Tensor, nn::VarStore};

pub use pth::{load_legacy, load_zip};
pub use safetensors::{dtype_of, kind_of, load_safetensors};

/// Reads the state dict in `path`: a zip-format or legacy `.pth`/`.pt` file written by
/// `torch.save` (a dict of tensors, or a checkpoint holding one under `"state_dict"` or
/// `"model"`), or a safetensors file. The format is recognised from the content.
///
/// Returns `(name, tensor)` pairs in the file's order: CPU tensors with the file's dtype,
/// shape and strides (PyTorch names, e.g. `layer1.0.conv1.weight`).
///
/// Errors (each message starts with the path): unreadable file, unknown format,
/// truncated or damaged data, a pickle that references a class outside the whitelist
/// (the message names the class), no state dict inside. Never runs code from the file.
pub fn load_state_dict(path: &Path) -> crate::Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow!("cannot read weight file {}: {e}", path.display()))?;
    load_state_dict_bytes(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// Like [`load_state_dict`], for the content of a file already in memory.
pub fn load_state_dict_bytes(bytes: &[u8]) -> crate::Result<Vec<(String, Tensor)>> {
    if bytes.starts_with(b"PK\x03\x04") {
        load_zip(bytes)
    } else if bytes.first() == Some(&0x80) {
        load_legacy(bytes)
    } else if bytes.len() >= 9 && bytes[8] == b'{' {
        load_safetensors(bytes)
    } else if bytes.is_empty() {
        bail!("the file is empty")
    } else {
        bail!(
            "not a weight file kestrel knows (a PyTorch .pth/.pt zip or legacy file, or safetensors)"
        )
    }
}

/// Renames the tensors of a state dict: `f` returns the new name, or `None` to drop the
/// tensor (e.g. a classifier that the model replaces). Use it when the model's variable
/// names differ from the file's, e.g. a body stored under the prefix `0.`.
pub fn map_names(
    tensors: Vec<(String, Tensor)>,
    mut f: impl FnMut(&str) -> Option<String>,
) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .filter_map(|(n, t)| f(&n).map(|m| (m, t)))
        .collect()
}

/// A tensor whose shape in the file differs from the model's variable of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The variable's name.
    pub name: String,
    /// Shape in the weight file.
    pub file_shape: Vec<i64>,
    /// Shape in the model.
    pub model_shape: Vec<i64>,
}

/// What [`load_into`] did, as PyTorch's `load_state_dict` reports (`missing_keys`,
/// `unexpected_keys`) plus the shape mismatches. Lists are sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables that received a value from the file.
    pub loaded: Vec<String>,
    /// Model variables the file has no tensor for (left as they were).
    pub missing: Vec<String>,
    /// File tensors the model has no variable for (ignored).
    pub unexpected: Vec<String>,
    /// Names present in both with different shapes (left as they were).
    pub mismatched: Vec<Mismatch>,
}

impl LoadReport {
    /// True when every variable was loaded and every tensor used.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl LoadReport {
    /// `; N missing …; N unexpected …; N with the wrong shape …`, empty when complete.
    fn problems(&self) -> String {
        let mut s = String::new();
        if !self.missing.is_empty() {
            s += &format!(
                "; {} missing from the file: [{}]",
                self.missing.len(),
                self.missing.join(", ")
            );
        }
        if !self.unexpected.is_empty() {
            s += &format!(
                "; {} unexpected (not in the model): [{}]",
                self.unexpected.len(),
                self.unexpected.join(", ")
            );
        }
        if !self.mismatched.is_empty() {
            let m: Vec<String> = self
                .mismatched
                .iter()
                .map(|m| {
                    format!(
                        "{} (file {:?}, model {:?})",
                        m.name, m.file_shape, m.model_shape
                    )
                })
                .collect();
            s += &format!("; {} with the wrong shape: [{}]", m.len(), m.join(", "));
        }
        s
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} tensors loaded{}", self.loaded.len(), self.problems())
    }
}

/// Copies the tensors into the variables of `vs` with the same names (PyTorch
/// `Module.load_state_dict`). Values are converted to each variable's dtype and device.
/// BatchNorm `*.num_batches_tracked` counters without a variable are skipped, not
/// reported (tch's BatchNorm has no such buffer).
///
/// `strict = true`: any missing, unexpected or shape-mismatched tensor is an error that
/// lists every one of them, and nothing is loaded. `strict = false`: loads what fits and
/// returns the rest in the [`LoadReport`].
///
/// Errors: strict mode with an incomplete match; a failing copy (libtorch error).
pub fn load_into(
    vs: &mut VarStore,
    tensors: Vec<(String, Tensor)>,
    strict: bool,
) -> crate::Result<LoadReport> {
    let vars = vs.variables();
    let mut report = LoadReport::default();
    let mut fits = Vec::new();
    for (name, t) in tensors {
        match vars.get(&name) {
            // BatchNorm's step counter: tch's BatchNorm has no such buffer (PyTorch uses it
            // only with momentum=None), so a file's counters are dropped silently.
            None if name.ends_with("num_batches_tracked") => {}
            None => report.unexpected.push(name),
            Some(v) if v.size() != t.size() => report.mismatched.push(Mismatch {
                name,
                file_shape: t.size(),
                model_shape: v.size(),
            }),
            Some(v) => fits.push((name, v.shallow_clone(), t)),
        }
    }
    let seen: HashSet<&str> = fits
        .iter()
        .map(|(n, _, _)| n.as_str())
        .chain(report.mismatched.iter().map(|m| m.name.as_str()))
        .collect();
    report.missing = vars
        .keys()
        .filter(|k| !seen.contains(k.as_str()))
        .cloned()
        .collect();
    report.missing.sort();
    report.unexpected.sort();
    report.mismatched.sort_by(|a, b| a.name.cmp(&b.name));
    if strict && !report.is_complete() {
        bail!(
            "the weights do not fit the model, nothing was loaded{}",
            report.problems()
        );
    }
    tch::no_grad(|| -> crate::Result<()> {
        for (name, mut v, t) in fits {
            v.f_copy_(&t)
                .map_err(|e| anyhow!("cannot copy tensor {name}: {e}"))?;
            report.loaded.push(name);
        }
        Ok(())
    })?;
    report.loaded.sort();
    Ok(report)
}

/// [`load_state_dict`] then [`load_into`]; errors name `path`.
pub fn load_file_into(vs: &mut VarStore, path: &Path, strict: bool) -> crate::Result<LoadReport> {
    let sd = load_state_dict(path)?;
    load_into(vs, sd, strict).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}
