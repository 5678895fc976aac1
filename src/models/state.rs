//! Copying named tensors (a state dict read from a weight file) into a `VarStore`, with
//! renaming, shape checks and a report of what did not fit (PyTorch `load_state_dict`).

use std::collections::{BTreeSet, HashMap};

use anyhow::bail;
use tch::{Tensor, nn};

/// What [`load_renamed`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Number of VarStore variables that received a tensor.
    pub loaded: usize,
    /// VarStore variables no tensor was given for (sorted).
    pub missing: Vec<String>,
    /// Names (after renaming) that the VarStore does not have (sorted).
    pub unexpected: Vec<String>,
}

/// True for the BatchNorm counter PyTorch saves and kestrel does not keep.
pub fn is_batch_counter(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

/// Copies `tensors` into `vs`. Each file name goes through `rename`: `None` skips the
/// tensor on purpose (e.g. an ImageNet classifier the model replaces); BatchNorm
/// `num_batches_tracked` counters are always skipped. Values are converted to the
/// variable's dtype and device.
///
/// Errors: a tensor whose shape differs from its variable (all of them are listed, as
/// `name: file (shape) vs model (shape)`); with `strict`, any missing or unexpected name
/// (all listed). Nothing is copied when an error is returned.
pub fn load_renamed(
    vs: &nn::VarStore,
    tensors: Vec<(String, Tensor)>,
    rename: impl Fn(&str) -> Option<String>,
    strict: bool,
) -> crate::Result<LoadReport> {
    let vars = vs.variables();
    let mut plan: Vec<(Tensor, Tensor)> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut unexpected = Vec::new();
    let mut mismatched = Vec::new();
    for (name, t) in tensors {
        if is_batch_counter(&name) {
            continue;
        }
        let Some(target) = rename(&name) else { continue };
        match vars.get(&target) {
            Some(v) if v.size() == t.size() => {
                plan.push((v.shallow_clone(), t));
                seen.insert(target);
            }
            Some(v) => mismatched.push(format!("{name}: file {:?} vs model {:?}", t.size(), v.size())),
            None => unexpected.push(target),
        }
    }
    if !mismatched.is_empty() {
        bail!("{} tensor(s) have the wrong shape: {}", mismatched.len(), mismatched.join("; "));
    }
    unexpected.sort();
    let mut missing: Vec<String> = vars.keys().filter(|k| !seen.contains(*k)).cloned().collect();
    missing.sort();
    if strict && (!missing.is_empty() || !unexpected.is_empty()) {
        bail!(
            "the weights do not fit the model: missing {} [{}], unexpected {} [{}]",
            missing.len(),
            missing.join(", "),
            unexpected.len(),
            unexpected.join(", ")
        );
    }
    tch::no_grad(|| {
        for (mut dst, src) in plan.iter().map(|(d, s)| (d.shallow_clone(), s)) {
            dst.copy_(&src.to_kind(dst.kind()).to_device(dst.device()));
        }
    });
    Ok(LoadReport { loaded: seen.len(), missing, unexpected })
}

/// The trainable variables of `vs` in creation order (the order PyTorch's
/// `parameters()` yields for the same network), with their names; BatchNorm running
/// statistics are not included.
pub fn ordered_trainable(vs: &nn::VarStore) -> Vec<String> {
    let by_ptr: HashMap<usize, String> =
        vs.variables().into_iter().map(|(name, t)| (t.data_ptr() as usize, name)).collect();
    vs.trainable_variables().iter().filter_map(|t| by_ptr.get(&(t.data_ptr() as usize)).cloned()).collect()
}
