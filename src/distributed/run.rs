//! What a command needs to run as one rank of a data-parallel job: the role from the
//! options and environment, the sharded loaders, lr_find's result from rank 0, and who
//! writes the outputs.

use super::{DistArgs, ProcessGroup, Role, Shard, init, launch, role};
use crate::data::{BatchSource, ImageDataLoaders};
use anyhow::{anyhow, bail};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One rank of a data-parallel run (PyTorch `init_process_group` done).
pub struct DistRun {
    /// The process group.
    pub pg: &'static ProcessGroup,
    /// This process's rank on its machine (its GPU with NCCL).
    pub local_rank: usize,
}

/// Starts the workers and exits with their code when the options ask for several
/// processes and this process is not already a worker (torchrun `--standalone`).
/// Returns only when this process should run the command itself.
///
/// Errors: as [`role`] and [`launch::launch`].
pub fn launch_if_asked(a: &DistArgs, device: &str) -> crate::Result<()> {
    if let Role::Launcher = role(a, device)? {
        let code = launch::launch(a)?;
        std::process::exit(code);
    }
    Ok(())
}

impl DistRun {
    /// The rank this process is, when it is a worker (process group initialised), else
    /// `None`. Prints the data-parallel setup on rank 0.
    ///
    /// Errors: as [`role`] and [`init`] (rendezvous, NCCL without CUDA).
    pub fn from_args(a: &DistArgs, device: &str, bs: usize) -> crate::Result<Option<Self>> {
        let Role::Worker(cfg) = role(a, device)? else { return Ok(None) };
        let pg = init(&cfg)?;
        if pg.rank() == 0 {
            println!("data-parallel: {} processes ({}), bs {bs} per process, global batch {}", pg.world(), pg.backend().name(), bs * pg.world());
        }
        Ok(Some(DistRun { pg, local_rank: cfg.local_rank }))
    }

    /// Rank 0 writes the outputs, checkpoints and report.
    pub fn is_main(&self) -> bool { self.pg.rank() == 0 }

    /// This rank's loaders: the training set's shuffled order padded and strided
    /// ([`Shard`] with `pad`, the same number of batches on every rank), the validation
    /// set strided without padding (each item validated once).
    ///
    /// Errors: a rank's share of the training set is smaller than the batch size (its
    /// loader, dropping the incomplete batch, would have nothing to train on).
    pub fn shard(&self, dls: &ImageDataLoaders) -> crate::Result<ImageDataLoaders> {
        let (rank, world) = (self.pg.rank(), self.pg.world());
        let train = dls.train.with_shard(Shard { rank, world, pad: true });
        if train.n_batches() == 0 {
            bail!(
                "the training set has {} images: {} per process for {world} processes, fewer than the batch size {} \
                 (--bs is per process); lower --bs or use fewer processes",
                dls.train.paths().len(), Shard { rank, world, pad: true }.len(dls.train.paths().len()),
                dls.train.config().bs
            );
        }
        Ok(ImageDataLoaders {
            train: Arc::new(train),
            valid: Arc::new(dls.valid.with_shard(Shard { rank, world, pad: false })),
            datasets: dls.datasets.clone(),
        })
    }

    /// Runs `find` (lr_find) on rank 0 only and hands its learning rate to every rank
    /// through the TCPStore (its wait is not bounded by the collective timeout: the sweep
    /// may take long). Errors: rank 0's error (on rank 0), "rank 0's lr_find failed" on the
    /// others, rank 0 lost.
    pub fn lr_from_rank0(&self, find: impl FnOnce() -> crate::Result<f64>) -> crate::Result<f64> {
        const KEY: &str = "kestrel/lr";
        if self.is_main() {
            let r = find();
            let msg = match &r { Ok(lr) => format!("ok {lr:e}"), Err(e) => format!("err {e:#}") };
            self.pg.store_set(KEY, msg.as_bytes())?;
            return r;
        }
        let t0 = Instant::now();
        let v = loop {
            match self.pg.store_get(KEY) {
                Ok(v) => break v,
                // A timeout while rank 0 still sweeps: wait again (up to a day).
                Err(e) if format!("{e:#}").to_lowercase().contains("timeout") && t0.elapsed() < Duration::from_secs(86_400) => continue,
                Err(e) => return Err(e.context(format!("rank {}: waiting for rank 0's lr_find: lost peer rank 0", self.pg.rank()))),
            }
        };
        let s = String::from_utf8_lossy(&v);
        match s.split_once(' ') {
            Some(("ok", lr)) => lr.parse().map_err(|_| anyhow!("rank 0 sent the learning rate {lr:?}")),
            Some(("err", e)) => bail!("rank 0's lr_find failed: {e}"),
            _ => bail!("rank 0 sent {s:?} for the learning rate"),
        }
    }
}
