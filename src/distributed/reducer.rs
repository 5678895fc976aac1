//! PyTorch DDP's gradient averaging: libtorch's `c10d::Reducer`, the object behind
//! `torch.nn.parallel.DistributedDataParallel`, bound through the shim
//! (csrc/c10d_reducer.cpp) with DDP's defaults (`bucket_cap_mb=25`, a 1 MiB first bucket,
//! `find_unused_parameters=False`, `gradient_as_bucket_view=False`).
//!
//! The Reducer hooks every parameter's gradient accumulator. During `backward()`, as soon
//! as every gradient of a bucket is ready, the bucket is divided by the world size and its
//! all-reduce starts, overlapping the rest of backward; when backward returns, every
//! parameter's `.grad` holds the average over the ranks. The first backward runs with a
//! single bucket; the buckets are then rebuilt in the order the gradients became ready
//! (rank 0's order, the same on every rank).

use super::comm::ProcessGroup;
use super::ffi::{self, KdReducer, take_error};
use std::ffi::c_void;
use tch::Tensor;

/// PyTorch DDP's default bucket size (`bucket_cap_mb=25`), bytes.
pub const BUCKET_BYTES: usize = 25 * 1024 * 1024;
/// PyTorch DDP's first bucket (`dist._DEFAULT_FIRST_BUCKET_BYTES`), bytes: the last
/// layers' gradients, ready first, are all-reduced without waiting for a full bucket.
pub const FIRST_BUCKET_BYTES: usize = 1024 * 1024;

/// Communication times of the gradient all-reduce, as DDP's logger measures them
/// (`avg_backward_comm_time`, `avg_backward_compute_comm_overlap_time`): averages over
/// the sampled steps (the first 10 of the Reducer, then every 100th).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommTimes {
    /// From the first bucket's all-reduce start to the last one's end, seconds per step.
    pub comm_secs: f64,
    /// The part of it during which backward was still computing, seconds per step.
    pub overlap_secs: f64,
}

/// A `c10d::Reducer` over the parameters that require a gradient (PyTorch DDP reduces
/// exactly those). Every rank must build it over the same parameters in the same order,
/// and call [`Reducer::prepare`] before every training forward pass. A change of the set
/// of trainable parameters (unfreezing) needs a new Reducer, as a new DDP wrapper would.
pub struct Reducer<'a> {
    r: *mut KdReducer,
    pg: &'a ProcessGroup,
}

// SAFETY: the handle is owned by this value; c10d's Reducer is itself driven from
// several threads (autograd's) and is only moved here, never shared.
unsafe impl Send for Reducer<'_> {}

impl<'a> Reducer<'a> {
    /// Hooks `params` (leaf tensors requiring a gradient, of one device: CPU with Gloo,
    /// CUDA with NCCL).
    ///
    /// Errors: no parameters; c10d refuses them (different devices, a non-leaf tensor).
    pub fn new(pg: &'a ProcessGroup, params: &[Tensor]) -> crate::Result<Self> {
        let ptrs: Vec<*mut c_void> = params.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        let mut r = std::ptr::null_mut();
        // SAFETY: live group; the shim copies the at::Tensor handles (keeping the tensors alive).
        take_error(unsafe {
            ffi::kd_reducer_new(pg.raw(), ptrs.as_ptr(), ptrs.len(), BUCKET_BYTES as i64, FIRST_BUCKET_BYTES as i64, &mut r)
        })
        .map_err(|m| anyhow::anyhow!("rank {}: {m}", pg.rank()))?;
        Ok(Self { r, pg })
    }

    /// Arms the hooks for the next backward (what `DistributedDataParallel.forward` does
    /// around the module's forward), rebuilding the buckets after the first backward.
    ///
    /// Errors: the previous backward did not produce a gradient for every parameter
    /// (c10d's "Expected to have finished reduction in the prior iteration"); a lost peer
    /// during the bucket rebuild.
    pub fn prepare(&mut self) -> crate::Result<()> {
        // SAFETY: live reducer.
        take_error(unsafe { ffi::kd_reducer_prepare(self.r) }).map_err(|m| self.pg.lost_peer("gradient bucket setup", &m))
    }

    /// DDP's measured communication times so far.
    ///
    /// Errors: none expected (c10d's logger failing).
    pub fn comm_times(&self) -> crate::Result<CommTimes> {
        let (mut comm, mut overlap) = (0i64, 0i64);
        // SAFETY: live reducer, valid out-pointers.
        take_error(unsafe { ffi::kd_reducer_stats(self.r, &mut comm, &mut overlap) }).map_err(|m| anyhow::anyhow!(m))?;
        Ok(CommTimes { comm_secs: comm.max(0) as f64 * 1e-9, overlap_secs: overlap.max(0) as f64 * 1e-9 })
    }
}

impl Drop for Reducer<'_> {
    fn drop(&mut self) {
        // SAFETY: created by kd_reducer_new, freed once; this removes the hooks.
        unsafe { ffi::kd_reducer_free(self.r) }
    }
}
