//! A [`BatchSource`] over tensors already in memory: for tests, synthetic data and users
//! whose data fits in memory.

use super::{Batch, BatchSource};
use crate::distributed::Shard;
use rand::seq::SliceRandom;
use std::sync::Mutex;
use tch::{Device, Tensor};

/// Batches of `(x, y)` rows taken from in-memory tensors (fastai `DataLoader` over a
/// tensor dataset). With `shuffle`, each pass `epoch` uses the permutation drawn from
/// `util::rng::derived(seed, epoch)`, so a pass's order depends only on seed and pass.
pub struct TensorLoader {
    // Tensors are `Send` but not `Sync`; the lock makes the loader shareable.
    xy: Mutex<(Tensor, Tensor)>,
    n: usize,
    bs: usize,
    shuffle: bool,
    drop_last: bool,
    seed: u64,
    device: Device,
    shard: Option<Shard>,
}

impl TensorLoader {
    /// A loader over `x` (N, …) and `y` (N, …) with batch size `bs`, moved to `device`
    /// batch by batch.
    ///
    /// Errors: `bs` is 0, or `x` and `y` have different first dimensions.
    pub fn new(x: Tensor, y: Tensor, bs: usize, shuffle: bool, drop_last: bool, seed: u64, device: Device) -> crate::Result<Self> {
        anyhow::ensure!(bs > 0, "TensorLoader: batch size must be > 0");
        let (nx, ny) = (x.size().first().copied().unwrap_or(0), y.size().first().copied().unwrap_or(0));
        anyhow::ensure!(nx == ny, "TensorLoader: x has {nx} rows but y has {ny}");
        Ok(TensorLoader { xy: Mutex::new((x, y)), n: nx as usize, bs, shuffle, drop_last, seed, device, shard: None })
    }

    /// The same loader restricted to one rank's share of every pass (PyTorch
    /// `DistributedSampler`, see [`Shard`]).
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = Some(shard);
        self
    }

    fn n(&self) -> usize { self.shard.map_or(self.n, |s| s.len(self.n)) }
}

impl BatchSource for TensorLoader {
    fn n_batches(&self) -> usize {
        if self.drop_last { self.n() / self.bs } else { self.n().div_ceil(self.bs) }
    }
    fn n_items(&self) -> usize { if self.drop_last { self.n_batches() * self.bs } else { self.n() } }
    fn device(&self) -> Device { self.device }
    fn batches(&self, epoch: u64) -> Box<dyn Iterator<Item = crate::Result<Batch>> + '_> {
        let mut idx: Vec<i64> = (0..self.n as i64).collect();
        if self.shuffle {
            idx.shuffle(&mut crate::util::rng::derived(self.seed, epoch));
        }
        if let Some(s) = self.shard {
            let order: Vec<usize> = idx.iter().map(|&i| i as usize).collect();
            idx = s.take(&order).into_iter().map(|i| i as i64).collect();
        }
        let nb = self.n_batches();
        Box::new((0..nb).map(move |b| {
            let sel = &idx[b * self.bs..((b + 1) * self.bs).min(idx.len())];
            let i = Tensor::from_slice(sel);
            let xy = self.xy.lock().map_err(|_| anyhow::anyhow!("TensorLoader: lock poisoned"))?;
            Ok(Batch { x: xy.0.index_select(0, &i).to_device(self.device), y: xy.1.index_select(0, &i).to_device(self.device) })
        }))
    }
}
