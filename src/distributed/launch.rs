//! `--nproc-per-node N`: starts N copies of this command as workers, as `torchrun
//! --standalone` does — a free rendezvous port on one machine, and for each worker
//! MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE and (unless set)
//! OMP_NUM_THREADS=1 — then waits for them.

use super::DistArgs;
use anyhow::Context;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released for the rendezvous).
pub fn free_port() -> crate::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("looking for a free port")?;
    Ok(l.local_addr()?.port())
}

/// Starts this machine's workers with this process's arguments and waits for them.
/// Ctrl-C reaches every worker (same process group): they agree to stop after the same
/// batch and rank 0 writes the checkpoint; the launcher waits for that. When a worker
/// fails, the others notice the lost peer and stop on their own; any still running
/// `--dist-timeout` + 30 s later are killed. Returns the exit code: the first non-zero
/// one of the workers, else 0.
///
/// Errors: the executable cannot be started.
pub fn launch(a: &DistArgs) -> crate::Result<i32> {
    let port = match a.master_port {
        Some(p) => p,
        None if a.nnodes == 1 => free_port()?,
        None => 29500,
    };
    let world = a.nproc_per_node * a.nnodes;
    let exe = std::env::current_exe().context("finding the kestrel executable")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Ctrl-C goes to the workers too; the launcher only waits for them.
    let _ = ctrlc::set_handler(|| eprintln!("\nlauncher: waiting for the workers to write their checkpoint"));
    eprintln!("launcher: {} worker(s) on this machine, world size {world}, rendezvous {}:{port}", a.nproc_per_node, a.master_addr);
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local in 0..a.nproc_per_node {
        let rank = a.node_rank * a.nproc_per_node + local;
        let mut c = Command::new(&exe);
        c.args(&args)
            .env("MASTER_ADDR", &a.master_addr)
            .env("MASTER_PORT", port.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", a.nproc_per_node.to_string())
            .env("GROUP_RANK", a.node_rank.to_string());
        if std::env::var_os("OMP_NUM_THREADS").is_none() { c.env("OMP_NUM_THREADS", "1"); }
        let child = c.spawn().with_context(|| format!("starting worker rank {rank} ({})", exe.display()))?;
        children.push((rank, child));
    }
    wait_all(children, Duration::from_secs(a.dist_timeout + 30))
}

fn wait_all(mut children: Vec<(usize, Child)>, grace: Duration) -> crate::Result<i32> {
    let mut code = 0;
    let mut failed_at: Option<Instant> = None;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            if let Some(st) = children[i].1.try_wait()? {
                let (rank, _) = children.remove(i);
                let c = st.code().unwrap_or(128 + 9);
                if c != 0 {
                    eprintln!("launcher: worker rank {rank} exited with {}", st);
                    if code == 0 { code = c; }
                    failed_at.get_or_insert_with(Instant::now);
                }
            } else {
                i += 1;
            }
        }
        if failed_at.is_some_and(|t| t.elapsed() > grace) {
            for (rank, c) in children.iter_mut() {
                eprintln!("launcher: killing worker rank {rank}, still running {}s after a worker failed", grace.as_secs());
                let _ = c.kill();
                let _ = c.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(code)
}
