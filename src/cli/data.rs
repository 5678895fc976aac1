//! `kestrel data`.

use clap::Args;

/// Arguments of `kestrel data`.
#[derive(Args, Debug)]
pub struct DataArgs {}

/// Runs `kestrel data`.
pub fn run(_args: DataArgs) -> crate::Result<()> {
    anyhow::bail!("kestrel data is not built yet")
}
