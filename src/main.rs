//! The `kestrel` binary: see [`kestrel::cli`].

/// Zeroed buffers of the data loader are cleared with `memset`, not purged and faulted in
/// again (see [`kestrel::util::alloc::ZeroByMemset`]).
#[global_allocator]
static ALLOC: kestrel::util::alloc::ZeroByMemset = kestrel::util::alloc::ZeroByMemset;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    // A file-size limit (`ulimit -f`, RLIMIT_FSIZE) then makes the write fail with an error
    // that kestrel reports, keeping the previous file, instead of killing the process.
    // SAFETY: setting a signal's disposition to SIG_IGN at start-up, before any thread.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if let Err(e) = kestrel::cli::main() {
        eprintln!("error: {e:#}");
        // 130 when Ctrl-C/SIGTERM stopped the command, else 1.
        std::process::exit(kestrel::callbacks::exit_status(&e));
    }
}
