//! `kestrel predict`.

use clap::Args;

/// Arguments of `kestrel predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {}

/// Runs `kestrel predict`.
pub fn run(_args: PredictArgs) -> crate::Result<()> {
    anyhow::bail!("kestrel predict is not built yet")
}
