//! The `kestrel` command line: one file per subcommand, each with an `Args` struct
//! (clap derive) and a `run` function.

pub mod data;
pub mod interpret;
pub mod predict;
pub mod predict_model;

use clap::{Parser, Subcommand};

/// kestrel: fastai's vision workflow — presizing, batch augmentation, transfer learning,
/// fine_tune — in one binary on libtorch.
#[derive(Parser, Debug)]
#[command(name = "kestrel", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect a dataset as a DataBlock sees it (fastai `DataBlock.summary`, `show_batch`).
    Data(data::DataArgs),
    /// Predict with a trained model, or with a pretrained ImageNet network (`--imagenet`).
    Predict(predict::PredictArgs),
    /// Look at a trained model's mistakes on labelled photos (fastai `ClassificationInterpretation`).
    Interpret(interpret::InterpretArgs),
}

/// Parses the command line and runs the subcommand.
///
/// Errors: whatever the subcommand returns; `main` prints it with its causes.
pub fn main() -> crate::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Data(a) => data::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Interpret(a) => interpret::run(a),
    }
}
