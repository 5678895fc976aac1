//! Checkpoints (fastai `Learner.save`/`load` with `with_opt=True`, plus the position in
//! the schedule so that an interrupted `fit_one_cycle`/`fine_tune` can resume at the
//! exact batch).
//!
//! File format: one libtorch archive (`Tensor::save_multi`) holding the model variables
//! (`model.<name>`, parameters and BatchNorm buffers), the optimizer state (`opt.…`) and
//! a JSON header (`meta`, UTF-8 bytes as a `u8` tensor) with the [`Position`], the seed and
//! the [`Recorder`] of the current phase (so that a resumed run
//! draws the whole loss curve and reports the same table). Written atomically (temporary
//! file + rename): a crash, `kill -9` or a full disk while writing leaves the previous
//! checkpoint as it was. A truncated or damaged file is refused with an error naming it.

use super::Learner;
use crate::callbacks::Recorder;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// Where in a (multi-phase) fit a checkpoint was taken: the next batch to run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Phase of the call (fine_tune: 0 frozen, 1 unfrozen; fit/fit_one_cycle: 0).
    pub phase: usize,
    /// Epoch within the phase.
    pub epoch: usize,
    /// Training batches of that epoch already done.
    pub iter: usize,
    /// Training batches done in the phase.
    pub train_iter: usize,
    /// Data pass of that epoch (see [`Learner::train_pass`]).
    pub train_pass: u64,
    /// Smoothed loss and its running state, so the log continues unchanged.
    pub smooth_loss: f64,
    /// Batches seen by the smoother.
    pub smooth_count: i32,
    /// The smoother's running value.
    pub smooth_val: f32,
    /// Seconds the timed run had taken at this position, over every process that ran it
    /// (see [`Learner::fit_clock`]); 0 when untimed, and in older checkpoints.
    #[serde(default)]
    pub fit_secs: f64,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    format: String,
    position: Option<Position>,
    seed: Option<u64>,
    /// SHA-256 of every other entry ([`content_sha256`]); absent in older checkpoints.
    #[serde(default)]
    sha256: Option<String>,
}

const FORMAT: &str = "kestrel-checkpoint-1";

impl Learner {
    /// The file of checkpoint `name`: `model_dir/name.pth`.
    pub fn checkpoint_path(&self, name: &str) -> PathBuf { self.model_dir.join(format!("{name}.pth")) }

    /// The position after the current training batch (for callbacks in `after_batch`).
    pub fn position_after_batch(&self) -> Position {
        let (c, v) = self.recorder.smooth_state();
        Position { phase: self.phase, epoch: self.epoch, iter: self.iter + 1, train_iter: self.train_iter,
                   train_pass: self.train_pass, smooth_loss: self.smooth_loss, smooth_count: c, smooth_val: v,
                   fit_secs: self.fit_secs() }
    }

    /// The position after the current epoch (for callbacks in `after_epoch`).
    pub fn position_after_epoch(&self) -> Position {
        let (c, v) = self.recorder.smooth_state();
        Position { phase: self.phase, epoch: self.epoch + 1, iter: 0, train_iter: self.train_iter,
                   train_pass: self.train_pass, smooth_loss: self.smooth_loss, smooth_count: c, smooth_val: v,
                   fit_secs: self.fit_secs() }
    }

    /// The position at the end of the current epoch's training, before its validation (for
    /// callbacks during validation: a resumed run redoes the validation).
    pub fn position_before_validation(&self) -> Position {
        let (c, v) = self.recorder.smooth_state();
        Position { phase: self.phase, epoch: self.epoch, iter: self.dls.train.n_batches(), train_iter: self.train_iter,
                   train_pass: self.train_pass.saturating_sub(1), smooth_loss: self.smooth_loss, smooth_count: c, smooth_val: v,
                   fit_secs: self.fit_secs() }
    }

    /// fastai `save(name)`: writes model, optimizer state and `position` (None outside a
    /// fit) to `model_dir/name.pth` atomically; returns the path.
    ///
    /// Errors: the file cannot be written.
    pub fn save(&self, name: &str, position: Option<Position>) -> crate::Result<PathBuf> {
        let path = self.checkpoint_path(name);
        let mut named: Vec<(String, Tensor)> = self.model_state().into_iter().map(|(k, t)| (format!("model.{k}"), t)).collect();
        named.extend(self.opt.state_tensors());
        if position.is_some() { named.extend(recorder_tensors(&self.recorder)); }
        let mut cpu: Vec<(String, Tensor)> = named.into_iter().map(|(k, t)| (k, t.to_device(tch::Device::Cpu))).collect();
        let sha256 = Some(content_sha256(cpu.iter().map(|(k, t)| (k.as_str(), t)))?);
        let meta = serde_json::to_vec(&Meta { format: FORMAT.into(), position, seed: self.seed, sha256 })?;
        cpu.push(("meta".into(), Tensor::from_slice(&meta)));
        let mut bytes = Vec::new();
        Tensor::save_multi_to_stream(&cpu, &mut bytes).with_context(|| format!("cannot serialise checkpoint {}", path.display()))?;
        crate::util::atomic::write_atomic(&path, &bytes)?;
        Ok(path)
    }

    /// fastai `load(name, with_opt=True)`: restores model and optimizer state from
    /// `model_dir/name.pth`; returns the saved position (None when saved outside a fit).
    ///
    /// Errors: the file is missing or not a kestrel checkpoint, or a variable is missing
    /// or has another shape.
    pub fn load(&mut self, name: &str) -> crate::Result<Option<Position>> {
        let path = self.checkpoint_path(name);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
        // libtorch's message carries a C++ backtrace: keep its first line.
        let named: HashMap<String, Tensor> = Tensor::load_multi_from_stream(std::io::Cursor::new(bytes))
            .map_err(|e| anyhow::anyhow!("{} is not a complete kestrel checkpoint (truncated or damaged file?): {}",
                                         path.display(), e.to_string().lines().next().unwrap_or_default()))?
            .into_iter().collect();
        let meta = named.get("meta").with_context(|| format!("{} is not a kestrel checkpoint (no meta)", path.display()))?;
        anyhow::ensure!(meta.kind() == Kind::Uint8 && meta.dim() == 1, "{}: damaged checkpoint (bad meta entry)", path.display());
        let meta: Vec<u8> = Vec::try_from(meta)?;
        let meta: Meta = serde_json::from_slice(&meta).with_context(|| format!("{}: unreadable header", path.display()))?;
        anyhow::ensure!(meta.format == FORMAT, "{}: format {} (expected {FORMAT})", path.display(), meta.format);
        if let Some(want) = &meta.sha256 {
            let got = content_sha256(named.iter().filter(|(k, _)| k.as_str() != "meta").map(|(k, t)| (k.as_str(), t)))?;
            anyhow::ensure!(&got == want, "{} is damaged: its content's SHA-256 is {got}, {want} was written", path.display());
        }
        let dev = self.model.var_store().device();
        let model: Vec<(String, Tensor)> = named.iter().filter_map(|(k, t)| k.strip_prefix("model.").map(|n| (n.to_string(), t.to_device(dev)))).collect();
        let n_vars = self.model.var_store().variables().len();
        anyhow::ensure!(model.len() == n_vars, "{}: {} model variables, the model has {n_vars}", path.display(), model.len());
        self.set_model_state(&model).with_context(|| format!("loading {}", path.display()))?;
        self.opt.load_state_tensors(&named).with_context(|| format!("loading {}", path.display()))?;
        if meta.seed.is_some() { self.seed = meta.seed; }
        self.resume_recorder = recorder_from(&named, self.metric_names());
        Ok(meta.position)
    }

    /// Loads checkpoint `name` and arranges for the next `fit_one_cycle`/`fine_tune` call
    /// (with the same arguments as the interrupted one) to continue at the saved batch:
    /// earlier phases, epochs and batches are skipped, the schedule position, data order
    /// and torch seed per batch are those of the uninterrupted run (`--resume`).
    ///
    /// Errors: as [`Learner::load`], or the checkpoint was saved outside a fit.
    pub fn load_checkpoint(&mut self, name: &str) -> crate::Result<Position> {
        let pos = self.load(name)?.with_context(|| format!("checkpoint {name} was saved outside a fit: nothing to resume"))?;
        self.resume = Some(pos);
        Ok(pos)
    }
}

/// The recorder's per-batch and per-epoch series as tensors (`recorder.*`; float64, so
/// NaN losses survive), saved with a checkpoint taken during a fit.
fn recorder_tensors(r: &Recorder) -> Vec<(String, Tensor)> {
    let cols = r.values.first().map_or(0, Vec::len);
    let flat: Vec<f64> = r.values.iter().flat_map(|v| v.iter().copied().chain(std::iter::repeat(f64::NAN)).take(cols)).collect();
    let iters: Vec<i64> = r.iters.iter().map(|&i| i as i64).collect();
    vec![
        ("recorder.losses".into(), Tensor::from_slice(&r.losses)),
        ("recorder.lrs".into(), Tensor::from_slice(&r.lrs)),
        ("recorder.moms".into(), Tensor::from_slice(&r.moms)),
        ("recorder.values".into(), Tensor::from_slice(&flat).reshape([r.values.len() as i64, cols as i64])),
        ("recorder.iters".into(), Tensor::from_slice(&iters)),
    ]
}

/// The recorder saved by [`recorder_tensors`], when the checkpoint has one with `names`'
/// number of columns (older checkpoints have none: the resumed run then records from the
/// resume point on).
fn recorder_from(named: &HashMap<String, Tensor>, names: Vec<String>) -> Option<Recorder> {
    let f64s = |k: &str| -> Option<Vec<f64>> {
        let t = named.get(k)?;
        (t.kind() == Kind::Double).then(|| Vec::<f64>::try_from(t.flatten(0, -1)).ok()).flatten()
    };
    let values = named.get("recorder.values")?;
    let (rows, cols) = match values.size().as_slice() { [r, c] => (*r as usize, *c as usize), _ => return None };
    if rows > 0 && cols != names.len() { return None; }
    let flat = f64s("recorder.values")?;
    let iters = named.get("recorder.iters").filter(|t| t.kind() == Kind::Int64)?;
    let iters: Vec<usize> = Vec::<i64>::try_from(iters).ok()?.into_iter().map(|i| i.max(0) as usize).collect();
    let mut r = Recorder::default();
    r.losses = f64s("recorder.losses")?;
    r.lrs = f64s("recorder.lrs")?;
    r.moms = f64s("recorder.moms")?;
    r.values = flat.chunks(cols.max(1)).take(rows).map(<[f64]>::to_vec).collect();
    r.iters = iters;
    r.metric_names = names;
    Some(r)
}

/// SHA-256 over the entries in name order: each name, its dtype, shape and bytes.
fn content_sha256<'a>(entries: impl Iterator<Item = (&'a str, &'a Tensor)>) -> crate::Result<String> {
    use sha2::{Digest, Sha256};
    let mut v: Vec<(&str, &Tensor)> = entries.collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, t) in v {
        let t = t.contiguous();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.kind(), t.size()).as_bytes());
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}
