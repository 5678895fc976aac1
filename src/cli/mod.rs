//! The `kestrel` command line: one file per subcommand, each with an `Args` struct
//! (clap derive) and a `run` function.

pub mod aug;
pub mod check_data;
pub mod data;
pub mod export;
pub mod fine_tune;
pub mod interpret;
pub mod lr_find;
pub mod model;
pub mod pets;
pub mod predict;
pub mod predict_model;
pub mod recipe;
pub mod run_options;

use clap::{Parser, Subcommand};

/// kestrel: fastai's vision workflow — presizing, batch augmentation, transfer learning,
/// fine_tune — in one binary on libtorch.
#[derive(Parser, Debug)]
#[command(name = "kestrel", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// The image size limits (`--max-image-pixels`, `--max-image-ratio`).
    #[command(flatten)]
    pub image_limits: crate::data::decode::ImageLimitArgs,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect a dataset as a DataBlock sees it (fastai `DataBlock.summary`, `show_batch`).
    Data(data::DataArgs),
    /// A health report of a dataset before training: counts per class and split,
    /// undecodable files, labeller misses, labels only in validation, duplicates, tiny images.
    CheckData(check_data::CheckDataArgs),
    /// Fine-tune a pretrained network on your images (fastai `vision_learner` +
    /// `fine_tune`), writing plots, metrics, the model and report.html.
    FineTune(fine_tune::FineTuneArgs),
    /// The learning-rate finder (fastai `learn.lr_find()`): sweeps the lr on the same data
    /// and model as fine-tune, prints the valley, minimum/10, steep and slide suggestions
    /// and draws the plot; `--from MODEL --unfreeze` is the second sweep after training the head.
    LrFind(lr_find::LrFindArgs),
    /// The fastai book's pet-breeds run (chapter 5) with its recipe.
    Pets(pets::PetsArgs),
    /// Predict with a trained model, or with a pretrained ImageNet network (`--imagenet`).
    Predict(predict::PredictArgs),
    /// Convert a model file for deployment: ONNX with its preprocessing and metadata inside.
    Export(export::ExportArgs),
    /// Look at a trained model's mistakes on labelled photos (fastai `ClassificationInterpretation`).
    Interpret(interpret::InterpretArgs),
}

/// Parses the command line and runs the subcommand.
///
/// Errors: whatever the subcommand returns; `main` prints it with its causes.
pub fn main() -> crate::Result<()> {
    let cli = Cli::parse();
    cli.image_limits.apply();
    if !matches!(cli.command, Command::FineTune(_) | Command::Pets(_)) {
        // Commands that only print (`check-data | head`) end quietly when the reader goes
        // away, as Unix tools do, instead of panicking in `println!` on EPIPE. Training keeps
        // SIGPIPE ignored: c10d's sockets to a lost peer must give an error, not a signal.
        // SAFETY: restoring a signal's default disposition, before any other thread runs.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Data(a) => data::run(a),
        Command::CheckData(a) => check_data::run(a),
        Command::FineTune(a) => fine_tune::run(a),
        Command::LrFind(a) => lr_find::run(a),
        Command::Pets(a) => pets::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Interpret(a) => interpret::run(a),
        Command::Export(a) => export::run(a),
    }
}
