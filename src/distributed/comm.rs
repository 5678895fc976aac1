//! Safe bindings to libtorch's c10d through the shim: a TCPStore rendezvous and a Gloo
//! (CPU) or NCCL (CUDA) process group with allreduce, broadcast and barrier, as
//! `torch.distributed.init_process_group(backend, init_method="tcp://…")` sets them up.

use super::ffi::{self, KdPg, KdStore, KdWork, take_error};
use anyhow::{Context, anyhow, bail};
use std::ffi::{CString, c_void};
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;
use tch::{Device, Tensor};

/// The collective library of a [`ProcessGroup`] (torch.distributed's `backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo over TCP: CPU tensors (PyTorch's CPU backend).
    Gloo,
    /// NCCL: CUDA tensors, one process per GPU (PyTorch's GPU backend).
    Nccl,
}

impl Backend {
    /// `gloo` or `nccl`.
    pub fn name(self) -> &'static str {
        match self { Backend::Gloo => "gloo", Backend::Nccl => "nccl" }
    }
}

/// Reduction of an all-reduce (c10d `ReduceOp`). Averages are sums divided by the world
/// size by the caller, as PyTorch DDP does (Gloo has no AVG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
}

impl ReduceOp {
    fn code(self) -> i32 {
        match self { ReduceOp::Sum => ffi::KD_OP_SUM, ReduceOp::Max => ffi::KD_OP_MAX, ReduceOp::Min => ffi::KD_OP_MIN }
    }
}

/// Where and how the ranks meet (torchrun's environment: MASTER_ADDR, MASTER_PORT,
/// WORLD_SIZE, RANK, LOCAL_RANK).
#[derive(Debug, Clone)]
pub struct DistConfig {
    /// Host of rank 0's TCPStore (an address or a name).
    pub master_addr: String,
    /// Port of rank 0's TCPStore.
    pub master_port: u16,
    /// Number of processes, ≥ 1.
    pub world: usize,
    /// This process's rank in 0..world.
    pub rank: usize,
    /// This process's rank on its machine (its GPU index with NCCL).
    pub local_rank: usize,
    /// Gloo or NCCL.
    pub backend: Backend,
    /// Longest wait of the rendezvous and of every collective; a peer that is gone or
    /// stuck longer makes the call fail naming it.
    pub timeout: Duration,
}

/// True when this kestrel was built with the NCCL process group (libtorch with CUDA and
/// the NCCL headers at build time).
pub fn has_nccl() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { ffi::kd_has_nccl() != 0 }
}

/// A c10d process group with its TCPStore (torch.distributed's default group). Collectives
/// block until every rank joined them, or fail with an error naming the lost peer after
/// [`DistConfig::timeout`] (at once when the peer's connection closed).
pub struct ProcessGroup {
    store: *mut KdStore,
    pg: *mut KdPg,
    rank: usize,
    world: usize,
    backend: Backend,
    device: Device,
    timeout_ms: i64,
    /// The address each rank's process group is bound to, by rank.
    addrs: Vec<String>,
}

// SAFETY: c10d's Store and Backend are used from several threads by PyTorch itself; the
// pointers are owned by this value and freed once in Drop.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

/// A collective started by [`ProcessGroup::allreduce_start`]; [`Work::wait`] finishes it.
pub struct Work<'a> {
    w: *mut KdWork,
    pg: &'a ProcessGroup,
    what: &'static str,
}

impl Work<'_> {
    /// Waits until the collective is done on this rank. Errors: a lost peer or the
    /// timeout, naming the peer.
    pub fn wait(self) -> crate::Result<()> {
        // SAFETY: `w` is a live work handle from kd_allreduce_start, freed in Drop.
        let r = take_error(unsafe { ffi::kd_work_wait(self.w, self.pg.timeout_ms) });
        r.map_err(|m| self.pg.lost_peer(self.what, &m))
    }
}

impl Drop for Work<'_> {
    fn drop(&mut self) {
        // SAFETY: created by kd_allreduce_start, freed once.
        unsafe { ffi::kd_work_free(self.w) }
    }
}

fn cstr(s: &str) -> crate::Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{s:?} contains a NUL byte"))
}

impl ProcessGroup {
    /// Rendezvous and process group (PyTorch `init_process_group`): rank 0 hosts a
    /// TCPStore at `master_addr:master_port`, every rank connects to it, publishes the
    /// address its process group binds to (the local address that routes to the master),
    /// and the Gloo or NCCL group connects every pair of ranks.
    ///
    /// Errors: rank ≥ world, the port is taken (rank 0), the master does not answer or a
    /// rank does not join within the timeout, NCCL asked of a build without it.
    pub fn init(cfg: &DistConfig) -> crate::Result<Self> {
        if cfg.world == 0 || cfg.rank >= cfg.world {
            bail!("rank {} is not in a world of {} processes", cfg.rank, cfg.world);
        }
        let timeout_ms = cfg.timeout.as_millis().min(i64::MAX as u128) as i64;
        let bind = bind_address(&cfg.master_addr, cfg.master_port)?;
        let host = cstr(&cfg.master_addr)?;
        let mut store = std::ptr::null_mut();
        // SAFETY: valid C strings and out-pointer.
        take_error(unsafe {
            ffi::kd_store_new(host.as_ptr(), cfg.master_port, (cfg.rank == 0) as i32, cfg.world as i32, timeout_ms, &mut store)
        })
        .map_err(|m| anyhow!("rank {}: rendezvous at {}:{} failed: {m}", cfg.rank, cfg.master_addr, cfg.master_port))?;
        let mut pg = ProcessGroup {
            store, pg: std::ptr::null_mut(), rank: cfg.rank, world: cfg.world, backend: cfg.backend, timeout_ms, addrs: vec![],
            device: match cfg.backend { Backend::Gloo => Device::Cpu, Backend::Nccl => Device::Cuda(cfg.local_rank) },
        };
        pg.store_set(&format!("kestrel/addr/{}", cfg.rank), bind.as_bytes())?;
        let prefix = cstr("kestrel/pg/")?;
        let mut p = std::ptr::null_mut();
        let r = match cfg.backend {
            Backend::Gloo => {
                let b = cstr(&bind)?;
                // SAFETY: live store, valid strings and out-pointer.
                unsafe { ffi::kd_pg_gloo_new(store, prefix.as_ptr(), cfg.rank as i32, cfg.world as i32, b.as_ptr(), 2, timeout_ms, &mut p) }
            }
            Backend::Nccl => {
                // SAFETY: as above.
                unsafe { ffi::kd_pg_nccl_new(store, prefix.as_ptr(), cfg.rank as i32, cfg.world as i32, timeout_ms, &mut p) }
            }
        };
        take_error(r).map_err(|m| anyhow!("rank {}: creating the {} process group of {} ranks failed: {m}", cfg.rank, cfg.backend.name(), cfg.world))?;
        pg.pg = p;
        pg.addrs = (0..cfg.world)
            .map(|r| pg.store_get(&format!("kestrel/addr/{r}")).map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect::<crate::Result<_>>()?;
        Ok(pg)
    }

    /// This process's rank.
    pub fn rank(&self) -> usize { self.rank }
    /// Number of processes.
    pub fn world(&self) -> usize { self.world }
    /// Gloo or NCCL.
    pub fn backend(&self) -> Backend { self.backend }
    /// Where this group's tensors must be: the CPU for Gloo, `cuda:LOCAL_RANK` for NCCL.
    pub fn device(&self) -> Device { self.device }
    /// The address each rank's group is bound to, by rank.
    pub fn addrs(&self) -> &[String] { &self.addrs }

    /// Stores `value` under `key` in the TCPStore (visible to every rank).
    pub fn store_set(&self, key: &str, value: &[u8]) -> crate::Result<()> {
        let k = cstr(key)?;
        // SAFETY: live store; the slice outlives the call.
        take_error(unsafe { ffi::kd_store_set(self.store, k.as_ptr(), value.as_ptr(), value.len()) })
            .map_err(|m| anyhow!("rank {}: {m} (the TCPStore on rank 0 is gone?)", self.rank))
    }

    /// The value of `key`, waiting for a rank to set it (at most the timeout).
    pub fn store_get(&self, key: &str) -> crate::Result<Vec<u8>> {
        let k = cstr(key)?;
        let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: live store, valid out-pointers; the returned buffer is freed below.
        take_error(unsafe { ffi::kd_store_get(self.store, k.as_ptr(), &mut ptr, &mut len) })
            .map_err(|m| anyhow!("rank {}: {m} (waiting for key {key}; the TCPStore on rank 0 is gone?)", self.rank))?;
        // SAFETY: `ptr` holds `len` bytes from malloc.
        let v = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
        unsafe { ffi::kd_free_bytes(ptr) };
        Ok(v)
    }

    /// Starts an in-place all-reduce of one dense contiguous tensor; [`Work::wait`]
    /// finishes it. Several started at once overlap (DDP's buckets).
    ///
    /// Errors: a non-contiguous tensor, or the collective failed to start.
    pub fn allreduce_start(&self, t: &Tensor, op: ReduceOp) -> crate::Result<Work<'_>> {
        anyhow::ensure!(t.is_contiguous(), "allreduce needs a contiguous tensor (shape {:?})", t.size());
        let ptrs = [t.as_ptr() as *mut c_void];
        let mut w = std::ptr::null_mut();
        // SAFETY: live group; the tensor pointer is an at::Tensor* that the shim copies.
        take_error(unsafe { ffi::kd_allreduce_start(self.pg, ptrs.as_ptr(), 1, op.code(), 0, self.timeout_ms, &mut w) })
            .map_err(|m| self.lost_peer("allreduce", &m))?;
        Ok(Work { w, pg: self, what: "allreduce" })
    }

    /// In-place all-reduce of one tensor (PyTorch `dist.all_reduce`).
    pub fn allreduce(&self, t: &Tensor, op: ReduceOp) -> crate::Result<()> {
        self.allreduce_start(t, op)?.wait()
    }

    /// In-place all-reduce of several tensors of one dtype and device as one message
    /// (c10d `allreduce_coalesced`).
    pub fn allreduce_coalesced(&self, ts: &[Tensor], op: ReduceOp) -> crate::Result<()> {
        if ts.is_empty() { return Ok(()); }
        for t in ts { anyhow::ensure!(t.is_contiguous(), "allreduce needs contiguous tensors (shape {:?})", t.size()); }
        let ptrs: Vec<*mut c_void> = ts.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        let mut w = std::ptr::null_mut();
        // SAFETY: as in allreduce_start.
        take_error(unsafe { ffi::kd_allreduce_start(self.pg, ptrs.as_ptr(), ptrs.len(), op.code(), 1, self.timeout_ms, &mut w) })
            .map_err(|m| self.lost_peer("allreduce_coalesced", &m))?;
        Work { w, pg: self, what: "allreduce_coalesced" }.wait()
    }

    /// Copies rank `root`'s values of each tensor into every rank's (PyTorch
    /// `dist.broadcast`), in place. Errors: non-contiguous tensors, a lost peer.
    pub fn broadcast(&self, ts: &[Tensor], root: usize) -> crate::Result<()> {
        for t in ts { anyhow::ensure!(t.is_contiguous(), "broadcast needs contiguous tensors (shape {:?})", t.size()); }
        let ptrs: Vec<*mut c_void> = ts.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        // SAFETY: live group; the shim copies the at::Tensor handles.
        take_error(unsafe { ffi::kd_broadcast(self.pg, ptrs.as_ptr(), ptrs.len(), root as i32, self.timeout_ms) })
            .map_err(|m| self.lost_peer("broadcast", &m))
    }

    /// Waits until every rank reached the barrier (PyTorch `dist.barrier`).
    pub fn barrier(&self) -> crate::Result<()> {
        // SAFETY: live group.
        take_error(unsafe { ffi::kd_barrier(self.pg, self.timeout_ms) }).map_err(|m| self.lost_peer("barrier", &m))
    }

    /// The shim's handle of the group, for [`super::reducer::Reducer`].
    pub(super) fn raw(&self) -> *mut KdPg { self.pg }

    /// `e` with the lost peer named, when it is a collective's failure that reached the
    /// caller through libtorch (the gradient all-reduce inside `backward()`: Gloo's
    /// "Connection closed by peer `[addr]:port`", a timeout); other errors unchanged.
    pub fn name_lost_peer(&self, e: anyhow::Error) -> anyhow::Error {
        let msg = format!("{e:#}");
        let lower = msg.to_lowercase();
        let collective = ["connection", "timed out", "timeout", "gloo", "nccl", "peer"].iter().any(|k| lower.contains(k));
        if msg.contains("lost peer") || !collective {
            return e;
        }
        self.lost_peer("gradient all-reduce during backward", &msg)
    }

    /// The error of a failed collective, naming the peer: from the address in Gloo's
    /// message ("Connection closed by peer [10.0.0.2]:41234") the ranks bound there; with
    /// two ranks, the other one.
    pub(crate) fn lost_peer(&self, what: &str, msg: &str) -> anyhow::Error {
        let ip = msg.split('[').nth(1).and_then(|s| s.split(']').next()).map(str::to_string);
        let mut ranks: Vec<usize> = match &ip {
            Some(ip) => (0..self.addrs.len()).filter(|&r| r != self.rank && &self.addrs[r] == ip).collect(),
            None => vec![],
        };
        if ranks.is_empty() && self.world == 2 { ranks.push(1 - self.rank); }
        let peer = match (ranks.as_slice(), &ip) {
            ([], Some(ip)) => format!("the peer at {ip}"),
            ([], None) => "a peer (no address in the error)".into(),
            (rs, _) => {
                let names: Vec<String> = rs.iter().map(|r| format!("rank {r}{}", self.addrs.get(*r).map_or(String::new(), |a| format!(" ({a})")))).collect();
                names.join(" or ")
            }
        };
        anyhow!("rank {}: lost peer {peer}: {what} failed: {}", self.rank, msg.lines().next().unwrap_or(msg))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created in init, freed once; the group before the store it uses.
        unsafe {
            if !self.pg.is_null() { ffi::kd_pg_free(self.pg); }
            if !self.store.is_null() { ffi::kd_store_free(self.store); }
        }
    }
}

/// The local address that routes to `master` (what Gloo's pairs bind to): 127.0.0.1 for
/// a loopback master, else the source address the kernel picks to reach it.
///
/// Errors: the master's name does not resolve, or no route leads to it.
pub fn bind_address(master: &str, port: u16) -> crate::Result<String> {
    let addr = (master, port).to_socket_addrs().with_context(|| format!("cannot resolve the master address {master}"))?
        .find(|a| a.is_ipv4()).with_context(|| format!("the master address {master} has no IPv4 address"))?;
    if addr.ip().is_loopback() {
        return Ok("127.0.0.1".into());
    }
    let s = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket to find the route to the master")?;
    s.connect(addr).with_context(|| format!("no route to the master {addr}"))?;
    let ip: IpAddr = s.local_addr()?.ip();
    Ok(ip.to_string())
}
