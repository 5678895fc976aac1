//! PyTorch DDP's semantics as a callback of the training loop (fastai `DistributedTrainer`):
//! parameters and buffers broadcast from rank 0 when a fit starts, gradients averaged over
//! the ranks during backward by libtorch's `c10d::Reducer` in DDP's buckets, overlapped
//! with backward ([`super::reducer`]), validation metrics reduced exactly (sums and counts,
//! not averages of averages), and a stop asked on any rank (Ctrl-C) agreed by all ranks
//! after the same batch, rank 0 writing the checkpoint.

use super::comm::{ProcessGroup, ReduceOp};
use super::reducer::{BUCKET_BYTES, Reducer};
use crate::callbacks::{Callback, Cancel, INTERRUPT_AFTER_ENV};
use crate::learner::Learner;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// The gradient all-reduce's time, as PyTorch DDP's logger measures it (per fit, over its
/// sampled steps; summed here over the fits weighted by their steps).
#[derive(Debug, Clone, Copy, Default)]
pub struct DdpStats {
    /// Optimizer steps whose gradients were averaged.
    pub steps: usize,
    /// All-reduce time over those steps (first bucket's start to last one's end), seconds.
    pub allreduce_secs: f64,
    /// The part of `allreduce_secs` overlapped with backward's computation, seconds.
    pub overlap_secs: f64,
}

/// The DDP callback (fastai `DistributedTrainer` around PyTorch `DistributedDataParallel`).
/// Add it to every rank's learner after `lr_find` (which runs on rank 0 alone), with loaders
/// sharded by [`super::Shard`].
pub struct DistributedTrainer {
    pg: &'static ProcessGroup,
    /// Set by this rank's Ctrl-C handler (or `KESTREL_INTERRUPT_AFTER`): asks every rank to stop.
    requested: Arc<AtomicBool>,
    /// Checkpoint name rank 0 writes when the ranks stop on request.
    checkpoint: String,
    interrupt_after: Option<usize>,
    seen: usize,
    valid: (f64, f64),
    valid_loss: Option<f64>,
    /// The gradient reducer of the current fit (its trainable parameters).
    reducer: Option<Reducer<'static>>,
    fit_steps: usize,
    /// Gradient all-reduce time, shared with the caller.
    pub stats: Arc<Mutex<DdpStats>>,
}

impl DistributedTrainer {
    /// A trainer over `pg`, stopping all ranks when `requested` is set on any of them
    /// (rank 0 then writes `model_dir/<checkpoint>.pth`). Reads [`INTERRUPT_AFTER_ENV`] as
    /// [`crate::callbacks::InterruptCallback`] does.
    ///
    /// Errors: the environment variable is not a number.
    pub fn new(pg: &'static ProcessGroup, requested: Arc<AtomicBool>, checkpoint: &str) -> crate::Result<Self> {
        let interrupt_after = match std::env::var(INTERRUPT_AFTER_ENV) {
            Ok(v) => Some(v.parse().map_err(|_| anyhow::anyhow!("{INTERRUPT_AFTER_ENV}={v} is not a number of batches"))?),
            Err(_) => None,
        };
        Ok(Self {
            pg, requested, checkpoint: checkpoint.into(), interrupt_after, seen: 0, valid: (0.0, 0.0), valid_loss: None,
            reducer: None, fit_steps: 0, stats: Arc::new(Mutex::new(DdpStats::default())),
        })
    }
}

/// Consecutive runs of `ts` of one dtype and device of at most `cap` bytes each (a tensor
/// larger than `cap` is a bucket of its own).
fn buckets(ts: &[Tensor], cap: usize) -> Vec<Vec<Tensor>> {
    let mut out: Vec<Vec<Tensor>> = Vec::new();
    let mut bytes = 0usize;
    for t in ts {
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let fits = out.last().is_some_and(|b| {
            let f = &b[0];
            f.kind() == t.kind() && f.device() == t.device() && bytes + n <= cap
        });
        if fits {
            bytes += n;
            out.last_mut().expect("a bucket").push(t.shallow_clone());
        } else {
            bytes = n;
            out.push(vec![t.shallow_clone()]);
        }
    }
    out
}

fn flatten(b: &[Tensor]) -> Tensor {
    Tensor::cat(&b.iter().map(|t| t.detach().reshape([-1])).collect::<Vec<_>>(), 0)
}

fn unflatten_into(flat: &Tensor, b: &[Tensor]) {
    let mut off = 0i64;
    for t in b {
        let n = t.numel() as i64;
        let mut dst = t.shallow_clone();
        dst.copy_(&flat.narrow(0, off, n).view(t.size().as_slice()));
        off += n;
    }
}

/// Copies rank `root`'s values of `ts` into every rank's (in buckets of [`BUCKET_BYTES`]).
/// Errors: a lost peer.
pub fn broadcast_tensors(pg: &ProcessGroup, ts: &[Tensor], root: usize) -> crate::Result<()> {
    tch::no_grad(|| {
        for b in buckets(ts, BUCKET_BYTES) {
            let flat = flatten(&b);
            pg.broadcast(std::slice::from_ref(&flat), root)?;
            unflatten_into(&flat, &b);
        }
        Ok(())
    })
}

/// Every variable of the model (parameters and buffers such as BatchNorm's running
/// statistics), sorted by name so that every rank lists them in the same order.
pub fn model_tensors(l: &Learner) -> Vec<Tensor> {
    let mut v: Vec<(String, Tensor)> = l.model.var_store().variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().map(|(_, t)| t).collect()
}

/// Reduces `v` over the ranks (f64, on the group's device: NCCL needs CUDA tensors).
fn reduce_f64(pg: &ProcessGroup, v: &[f64], op: ReduceOp) -> crate::Result<Vec<f64>> {
    let t = Tensor::from_slice(v).to_kind(Kind::Double).to_device(pg.device());
    pg.allreduce(&t, op)?;
    Ok(Vec::<f64>::try_from(&t.to_device(tch::Device::Cpu))?)
}

/// Sums `v` over the ranks.
fn sum_f64(pg: &ProcessGroup, v: &[f64]) -> crate::Result<Vec<f64>> {
    reduce_f64(pg, v, ReduceOp::Sum)
}

impl Callback for DistributedTrainer {
    fn name(&self) -> String { "DistributedTrainer".into() }
    // Before the loggers (60-70) in after_epoch, before InterruptCallback (80).
    fn order(&self) -> i32 { -10 }

    fn before_fit(&mut self, l: &mut Learner) -> crate::Result<()> {
        broadcast_tensors(self.pg, &model_tensors(l), 0)?;
        // The parameters that require a gradient now, in the optimizer's order, the same
        // on every rank (PyTorch DDP reduces those; fine_tune's unfrozen fit gets a new
        // Reducer over the whole model).
        let params: Vec<Tensor> = l.opt.groups.iter().flatten()
            .filter(|p| p.tensor.requires_grad())
            .map(|p| p.tensor.shallow_clone())
            .collect();
        self.reducer = Some(Reducer::new(self.pg, &params)?);
        self.fit_steps = 0;
        Ok(())
    }

    fn before_batch(&mut self, l: &mut Learner) -> crate::Result<()> {
        if let (true, Some(r)) = (l.training, self.reducer.as_mut()) {
            r.prepare()?;
        }
        Ok(())
    }

    fn after_backward(&mut self, _l: &mut Learner) -> crate::Result<()> {
        self.fit_steps += 1;
        Ok(())
    }

    fn after_fit(&mut self, _l: &mut Learner) -> crate::Result<()> {
        if let Some(r) = self.reducer.take() {
            let t = r.comm_times()?;
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.steps += self.fit_steps;
            s.allreduce_secs += t.comm_secs * self.fit_steps as f64;
            s.overlap_secs += t.overlap_secs * self.fit_steps as f64;
        }
        Ok(())
    }

    fn after_batch(&mut self, l: &mut Learner) -> crate::Result<()> {
        if !l.training { return Ok(()); }
        self.seen += 1;
        let local = self.requested.load(Ordering::SeqCst) || self.interrupt_after == Some(self.seen);
        let any = sum_f64(self.pg, &[local as i32 as f64])?[0] > 0.0;
        if any {
            if self.pg.rank() == 0 {
                l.save(&self.checkpoint, Some(l.position_after_batch()))?;
            }
            l.stop_reason = Some("interrupted".into());
            return Err(Cancel::Fit.into());
        }
        Ok(())
    }

    fn before_validate(&mut self, _l: &mut Learner) -> crate::Result<()> {
        self.valid = (0.0, 0.0);
        self.valid_loss = None;
        Ok(())
    }

    fn after_loss(&mut self, l: &mut Learner) -> crate::Result<()> {
        if !l.training {
            let bs = l.yb.as_ref().map_or(0, |y| y.size()[0]) as f64;
            self.valid.0 += l.loss * bs;
            self.valid.1 += bs;
        }
        Ok(())
    }

    fn after_validate(&mut self, l: &mut Learner) -> crate::Result<()> {
        let s = sum_f64(self.pg, &[self.valid.0, self.valid.1])?;
        self.valid_loss = Some(if s[1] > 0.0 { s[0] / s[1] } else { f64::NAN });
        reduce_metrics(self.pg, l)
    }

    fn after_epoch(&mut self, l: &mut Learner) -> crate::Result<()> {
        if let (Some(v), Some(row)) = (self.valid_loss.take(), l.recorder.values.last_mut())
            && row.len() > 1
        {
            row[1] = v;
        }
        Ok(())
    }
}

/// Replaces every metric's state by its sum over the ranks ([`crate::metrics::Metric::sums`]),
/// so that `value()` is the metric of the whole validation set.
/// Errors: a metric that cannot be summed, a lost peer.
pub fn reduce_metrics(pg: &ProcessGroup, l: &mut Learner) -> crate::Result<()> {
    let mut sums = Vec::new();
    for m in &l.metrics {
        sums.push(m.sums().ok_or_else(|| anyhow::anyhow!("metric {} cannot be reduced across data-parallel ranks", m.name()))?);
    }
    let lens: Vec<f64> = sums.iter().map(|s| s.len() as f64).collect();
    let lens: Vec<usize> = reduce_f64(pg, &lens, ReduceOp::Max)?.into_iter().map(|x| x as usize).collect();
    let mut flat = Vec::new();
    for (s, &n) in sums.iter().zip(&lens) {
        flat.extend(s.iter().copied());
        flat.extend(std::iter::repeat_n(0.0, n - s.len()));
    }
    if flat.is_empty() { return Ok(()); }
    let flat = sum_f64(pg, &flat)?;
    let mut off = 0;
    for (m, &n) in l.metrics.iter_mut().zip(&lens) {
        m.set_sums(&flat[off..off + n])?;
        off += n;
    }
    Ok(())
}
