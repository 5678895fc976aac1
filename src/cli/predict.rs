//! `kestrel predict`: top-5 ImageNet classes of photos with a pretrained network
//! (`--imagenet`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use tch::Tensor;

use crate::models::Arch;
use crate::models::imagenet::{ImagenetClassifier, class_names, load_center_crop, normalize, top_k};
use crate::util::device::parse_device;

/// Arguments of `kestrel predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Classify with a pretrained network and its original 1000-class ImageNet classifier
    /// (no training involved): prints the 5 most probable ImageNet classes of each photo.
    #[arg(long)]
    pub imagenet: bool,
    /// Architecture of the pretrained network: resnet18, resnet34, resnet50, resnet101,
    /// resnet152, efficientnet_lite0 … efficientnet_lite4.
    #[arg(long, default_value = "resnet34")]
    pub arch: String,
    /// Weight file of the pretrained network (safetensors; names as torchvision's state
    /// dict or the EfficientNet-Lite `.pth` files).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Print one JSON object per photo per line:
    /// {"file": ..., "top": [{"label": ..., "index": ..., "prob": ...}, ...]}.
    #[arg(long)]
    pub json: bool,
    /// Where to run the network: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Photos to classify (JPEG, PNG, …).
    #[arg(required = true, value_name = "PHOTO")]
    pub photos: Vec<PathBuf>,
}

/// Runs `kestrel predict`.
///
/// Errors: an unknown architecture or device, a missing or unfitting weight file, an
/// unreadable photo (named).
pub fn run(args: PredictArgs) -> crate::Result<()> {
    if args.imagenet {
        return run_imagenet(&args);
    }
    bail!("kestrel predict needs --imagenet (prediction with a trained model is not built yet)")
}

/// Reads a weight file into named tensors.
///
/// Errors: the file cannot be read, or it is not a safetensors file.
fn read_weights(path: &Path) -> crate::Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).with_context(|| format!("cannot read weights from {}", path.display()))
}

/// Number of photos per forward pass.
const BATCH: usize = 32;

/// `--imagenet`: top-5 ImageNet classes of each photo with a pretrained network, the
/// photo preprocessed as the reference (short side resized to the model's resolution,
/// antialiased bilinear, centre crop; the model's normalisation).
fn run_imagenet(args: &PredictArgs) -> crate::Result<()> {
    let arch: Arch = args.arch.parse()?;
    let device = parse_device(&args.device)?;
    let Some(weights) = &args.weights else {
        bail!("kestrel predict --imagenet --arch {arch} needs --weights FILE (a safetensors file of the pretrained network)")
    };
    let mut model = ImagenetClassifier::new(arch, device)?;
    model.load(read_weights(weights)?)?;
    let meta = model.meta();
    let names = class_names();
    for chunk in args.photos.chunks(BATCH) {
        let imgs = chunk
            .iter()
            .map(|p| load_center_crop(p, meta.input_size as u32))
            .collect::<crate::Result<Vec<_>>>()?;
        let xs = normalize(&Tensor::stack(&imgs, 0).to_device(device), &meta.normalization);
        for (path, top) in chunk.iter().zip(top_k(&model.forward(&xs), 5)) {
            print_top(path, &top, &names, args.json);
        }
    }
    Ok(())
}

fn print_top(path: &Path, top: &[(i64, f64)], names: &[&str], json: bool) {
    let label = |i: i64| names.get(i as usize).copied().unwrap_or("?");
    if json {
        let top: Vec<_> = top
            .iter()
            .map(|&(i, p)| serde_json::json!({"label": label(i), "index": i, "prob": (p * 1e4).round() / 1e4}))
            .collect();
        println!("{}", serde_json::json!({"file": path.display().to_string(), "top": top}));
    } else {
        println!("{}", path.display());
        for &(i, p) in top {
            println!("  {p:.4}  {i:>3}  {}", label(i));
        }
    }
}
