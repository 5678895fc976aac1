//! Checkpoints (fastai `Learner.save`/`load` with `with_opt=True`, plus the position in
//! the schedule so that an interrupted `fit_one_cycle`/`fine_tune` can resume at the
//! exact batch).
//!
//! File format: one libtorch archive (`Tensor::save_multi`) holding the model variables
//! (`model.<name>`, parameters and BatchNorm buffers), the optimizer state (`opt.…`) and
//! a JSON header (`meta`, UTF-8 bytes as a `u8` tensor) with the [`Position`] and the seed.
//! Written atomically (temporary file + rename).

use super::Learner;
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
}

#[derive(Serialize, Deserialize)]
struct Meta {
    format: String,
    position: Option<Position>,
    seed: Option<u64>,
}

const FORMAT: &str = "kestrel-checkpoint-1";

impl Learner {
    /// The file of checkpoint `name`: `model_dir/name.pth`.
    pub fn checkpoint_path(&self, name: &str) -> PathBuf { self.model_dir.join(format!("{name}.pth")) }

    /// The position after the current training batch (for callbacks in `after_batch`).
    pub fn position_after_batch(&self) -> Position {
        let (c, v) = self.recorder.smooth_state();
        Position { phase: self.phase, epoch: self.epoch, iter: self.iter + 1, train_iter: self.train_iter,
                   train_pass: self.train_pass, smooth_loss: self.smooth_loss, smooth_count: c, smooth_val: v }
    }

    /// The position after the current epoch (for callbacks in `after_epoch`).
    pub fn position_after_epoch(&self) -> Position {
        let (c, v) = self.recorder.smooth_state();
        Position { phase: self.phase, epoch: self.epoch + 1, iter: 0, train_iter: self.train_iter,
                   train_pass: self.train_pass, smooth_loss: self.smooth_loss, smooth_count: c, smooth_val: v }
    }

    /// fastai `save(name)`: writes model, optimizer state and `position` (None outside a
    /// fit) to `model_dir/name.pth` atomically; returns the path.
    ///
    /// Errors: the file cannot be written.
    pub fn save(&self, name: &str, position: Option<Position>) -> crate::Result<PathBuf> {
        let path = self.checkpoint_path(name);
        let mut named: Vec<(String, Tensor)> = self.model_state().into_iter().map(|(k, t)| (format!("model.{k}"), t)).collect();
        named.extend(self.opt.state_tensors());
        let meta = serde_json::to_vec(&Meta { format: FORMAT.into(), position, seed: self.seed })?;
        named.push(("meta".into(), Tensor::from_slice(&meta)));
        let cpu: Vec<(String, Tensor)> = named.into_iter().map(|(k, t)| (k, t.to_device(tch::Device::Cpu))).collect();
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
        let named: HashMap<String, Tensor> = Tensor::load_multi_from_stream(std::io::Cursor::new(bytes))
            .with_context(|| format!("{} is not a libtorch archive", path.display()))?.into_iter().collect();
        let meta = named.get("meta").with_context(|| format!("{} is not a kestrel checkpoint (no meta)", path.display()))?;
        let meta: Vec<u8> = Vec::try_from(meta.to_kind(Kind::Uint8))?;
        let meta: Meta = serde_json::from_slice(&meta).with_context(|| format!("{}: unreadable header", path.display()))?;
        anyhow::ensure!(meta.format == FORMAT, "{}: format {} (expected {FORMAT})", path.display(), meta.format);
        let dev = self.model.var_store().device();
        let model: Vec<(String, Tensor)> = named.iter().filter_map(|(k, t)| k.strip_prefix("model.").map(|n| (n.to_string(), t.to_device(dev)))).collect();
        let n_vars = self.model.var_store().variables().len();
        anyhow::ensure!(model.len() == n_vars, "{}: {} model variables, the model has {n_vars}", path.display(), model.len());
        self.set_model_state(&model).with_context(|| format!("loading {}", path.display()))?;
        self.opt.load_state_tensors(&named).with_context(|| format!("loading {}", path.display()))?;
        if meta.seed.is_some() { self.seed = meta.seed; }
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
