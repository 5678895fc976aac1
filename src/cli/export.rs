//! `kestrel export MODEL.safetensors --format onnx [--out FILE]`: a model file as a
//! self-describing ONNX model (see [`crate::export::onnx`]).

use crate::export::{export_onnx, load_model};
use anyhow::bail;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tch::Device;

/// Target formats of `kestrel export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// ONNX (opset 17, IR 8), runnable by onnxruntime and `kestrel-serve`.
    Onnx,
}

/// Arguments of `kestrel export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The model file written by `kestrel fine-tune` (`model.safetensors`).
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "onnx")]
    pub format: ExportFormat,
    /// Output file (default: MODEL with the extension `.onnx`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `kestrel export`: loads the model on the CPU and writes the ONNX file atomically,
/// then prints its path and size.
///
/// Errors: the model file cannot be loaded (truncated, corrupt, not a kestrel model...),
/// an architecture or transform the ONNX export does not support, an output path equal to
/// the model's, or the output cannot be written.
pub fn run(args: ExportArgs) -> crate::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| args.model.with_extension("onnx"));
    if out == args.model {
        bail!("the output {} would overwrite the model file; choose another --out", out.display());
    }
    let loaded = load_model(&args.model, Device::Cpu)?;
    match args.format {
        ExportFormat::Onnx => export_onnx(&out, loaded.model.as_ref(), &loaded.meta)?,
    }
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!("{} ({:.1} MB, {} classes, input uint8 (N, 3, {p}, {p}))", out.display(), bytes as f64 / 1e6,
             loaded.meta.card.vocab.len(), p = loaded.meta.card.transforms.presize);
    Ok(())
}
