//! `kestrel check-data`: a dataset's health report before training.

use super::data::DataOpts;
use crate::data::check::check_data;
use clap::Args;

/// Arguments of `kestrel check-data`.
#[derive(Args, Debug)]
pub struct CheckDataArgs {
    /// The data (the same options as `kestrel data` and `kestrel fine-tune`).
    #[command(flatten)]
    pub data: DataOpts,
    /// Training size (`fine-tune --size`): images whose smaller side is below it are
    /// reported as tiny, pixels.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
}

/// Runs `kestrel check-data`: prints the report; exits non-zero when problems (not mere
/// warnings) were found.
///
/// Errors: the items cannot be listed or split; problems were found (their number).
pub fn run(a: CheckDataArgs) -> crate::Result<()> {
    let r = check_data(&a.data.to_datablock()?, a.size)?;
    print!("{r}");
    match r.n_problems() {
        0 => Ok(()),
        n => anyhow::bail!("check-data: {n} problems found (listed above)"),
    }
}
