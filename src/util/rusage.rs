//! CPU time, page faults and peak memory of this process (`getrusage(RUSAGE_SELF)`), to
//! say where a run's time goes: user vs kernel time, minor page faults, peak RSS.

/// A snapshot of the process's resource usage (all threads).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// CPU time in user mode, seconds.
    pub user_s: f64,
    /// CPU time in the kernel, seconds.
    pub system_s: f64,
    /// Minor page faults (pages mapped without I/O), count.
    pub minor_faults: u64,
    /// Peak resident set size so far, bytes.
    pub max_rss: u64,
}

impl Usage {
    /// The usage so far (zeros where `getrusage` is not available).
    pub fn now() -> Usage {
        #[cfg(unix)]
        {
            // SAFETY: getrusage fills the zeroed struct it is given.
            let mut r: libc::rusage = unsafe { std::mem::zeroed() };
            if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) } != 0 { return Usage::default(); }
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            // ru_maxrss is in KiB on Linux, in bytes on macOS.
            let rss_unit = if cfg!(target_vendor = "apple") { 1 } else { 1024 };
            Usage { user_s: secs(r.ru_utime), system_s: secs(r.ru_stime), minor_faults: r.ru_minflt as u64,
                    max_rss: r.ru_maxrss as u64 * rss_unit }
        }
        #[cfg(not(unix))]
        { Usage::default() }
    }

    /// The usage between `earlier` and `self` (times and faults; `max_rss` stays `self`'s).
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage { user_s: self.user_s - earlier.user_s, system_s: self.system_s - earlier.system_s,
                minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults), max_rss: self.max_rss }
    }

    /// Kernel time as a fraction of the CPU time (user + system), in [0, 1]; 0 when no CPU time.
    pub fn kernel_fraction(&self) -> f64 {
        let total = self.user_s + self.system_s;
        if total > 0.0 { self.system_s / total } else { 0.0 }
    }
}

impl std::fmt::Display for Usage {
    /// `user 80.1 s, system 2.3 s (2.8% kernel), 0.41 M minor faults, peak RSS 2.10 GB`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "user {:.1} s, system {:.1} s ({:.1}% kernel), {:.2} M minor faults, peak RSS {:.2} GB",
               self.user_s, self.system_s, 100.0 * self.kernel_fraction(), self.minor_faults as f64 / 1e6, self.max_rss as f64 / 1e9)
    }
}
