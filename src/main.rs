//! The `kestrel` binary: see [`kestrel::cli`].

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    if let Err(e) = kestrel::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
