//! Data-parallel training on libtorch's c10d — the engine of PyTorch DDP and torchrun:
//! a C++ shim (csrc/, compiled by build.rs) exposes c10d's TCPStore, ProcessGroupGloo (CPU)
//! and ProcessGroupNCCL (CUDA builds) with allreduce, broadcast and barrier ([`comm`]),
//! and DDP's gradient reducer, `c10d::Reducer` ([`reducer`]);
//! [`Shard`] is PyTorch's `DistributedSampler`; [`DistributedTrainer`] gives the learner
//! DDP's semantics; [`launch`] starts N worker processes as `torchrun --standalone` does,
//! and a worker reads torchrun's environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK,
//! LOCAL_RANK), so torchrun itself can launch kestrel.

pub mod comm;
pub mod ddp;
pub(crate) mod ffi;
pub mod launch;
pub mod reducer;
pub mod run;
pub mod sampler;

pub use comm::{Backend, DistConfig, ProcessGroup, ReduceOp, Work, bind_address, has_nccl};
pub use ddp::{DdpStats, DistributedTrainer, broadcast_tensors, model_tensors, reduce_metrics};
pub use reducer::{BUCKET_BYTES, CommTimes, FIRST_BUCKET_BYTES, Reducer};
pub use run::{DistRun, launch_if_asked};
pub use sampler::{Shard, mix_rank};

use anyhow::{Context, bail};
use clap::Args;
use std::sync::OnceLock;
use std::time::Duration;

/// The options of data-parallel training, with torchrun's names (flattened into
/// `kestrel fine-tune` and `kestrel pets`).
#[derive(Args, Debug, Clone)]
pub struct DistArgs {
    /// Worker processes to start on this machine, one per GPU with CUDA (torchrun
    /// `--nproc-per-node`). `--bs` is per process: the global batch is bs × processes.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub nproc_per_node: usize,
    /// Machines taking part (torchrun `--nnodes`); start kestrel once on each.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub nnodes: usize,
    /// This machine's index in 0..nnodes; rank 0's machine hosts the rendezvous (torchrun
    /// `--node-rank`).
    #[arg(long, default_value_t = 0, value_name = "I")]
    pub node_rank: usize,
    /// Address of the machine with node rank 0 (torchrun `--master-addr`).
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub master_addr: String,
    /// Port of the rendezvous on the master (torchrun `--master-port`); default: a free
    /// port on one machine, 29500 on several.
    #[arg(long, value_name = "PORT")]
    pub master_port: Option<u16>,
    /// Seconds a rank waits for the others (rendezvous and every collective) before it
    /// stops with an error naming the missing peer; a peer whose process died is noticed
    /// at once.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub dist_timeout: u64,
}

impl Default for DistArgs {
    fn default() -> Self {
        DistArgs { nproc_per_node: 1, nnodes: 1, node_rank: 0, master_addr: "127.0.0.1".into(), master_port: None, dist_timeout: 300 }
    }
}

/// What this process is in a run.
#[derive(Debug, Clone)]
pub enum Role {
    /// An ordinary one-process run.
    Single,
    /// Starts `--nproc-per-node` workers and waits for them.
    Launcher,
    /// One rank of a data-parallel run (its environment came from kestrel's launcher or torchrun).
    Worker(DistConfig),
}

fn env_usize(k: &str) -> crate::Result<Option<usize>> {
    match std::env::var(k) {
        Ok(v) => Ok(Some(v.trim().parse().with_context(|| format!("environment variable {k}={v} is not a number"))?)),
        Err(_) => Ok(None),
    }
}

/// This process's role: a worker when torchrun's WORLD_SIZE (> 1) and RANK are set, a
/// launcher when the options ask for several processes, else a single process. Workers use
/// NCCL when `device` is a CUDA device (then device `cuda:LOCAL_RANK`), else Gloo.
///
/// Errors: malformed environment variables (naming them), RANK without MASTER_ADDR/PORT,
/// zero processes.
pub fn role(a: &DistArgs, device: &str) -> crate::Result<Role> {
    if let Some(world) = env_usize("WORLD_SIZE")? {
        if world > 1 {
            let rank = env_usize("RANK")?.context("WORLD_SIZE is set but RANK is not (torchrun sets both)")?;
            let local_rank = env_usize("LOCAL_RANK")?.unwrap_or(0);
            let master_addr = std::env::var("MASTER_ADDR").context("WORLD_SIZE is set but MASTER_ADDR is not")?;
            let port = std::env::var("MASTER_PORT").context("WORLD_SIZE is set but MASTER_PORT is not")?;
            let master_port = port.trim().parse().with_context(|| format!("MASTER_PORT={port} is not a port number"))?;
            let backend = if device.starts_with("cuda") { Backend::Nccl } else { Backend::Gloo };
            if rank >= world { bail!("RANK={rank} is not below WORLD_SIZE={world}"); }
            return Ok(Role::Worker(DistConfig {
                master_addr, master_port, world, rank, local_rank, backend, timeout: Duration::from_secs(a.dist_timeout),
            }));
        }
        return Ok(Role::Single);
    }
    if a.nproc_per_node == 0 || a.nnodes == 0 { bail!("--nproc-per-node and --nnodes must be at least 1"); }
    if a.node_rank >= a.nnodes { bail!("--node-rank {} is not below --nnodes {}", a.node_rank, a.nnodes); }
    Ok(if a.nproc_per_node * a.nnodes > 1 { Role::Launcher } else { Role::Single })
}

static GROUP: OnceLock<ProcessGroup> = OnceLock::new();

/// The process-wide process group (torch.distributed's default group), created on first
/// call and kept until the process exits (never torn down while a peer may be gone).
///
/// Errors: as [`ProcessGroup::init`]; a second call with another rank or world.
pub fn init(cfg: &DistConfig) -> crate::Result<&'static ProcessGroup> {
    if let Some(pg) = GROUP.get() {
        anyhow::ensure!(pg.rank() == cfg.rank && pg.world() == cfg.world, "the process group is already initialised as rank {} of {}", pg.rank(), pg.world());
        return Ok(pg);
    }
    let pg = ProcessGroup::init(cfg)?;
    Ok(GROUP.get_or_init(|| pg))
}

/// The process group if [`init`] was called.
pub fn group() -> Option<&'static ProcessGroup> {
    GROUP.get()
}
