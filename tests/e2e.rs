//! End to end: `kestrel fine-tune` on a tiny synthetic dataset (every output file, the
//! report with its images inlined), Ctrl-C-equivalent interrupt and `--resume`, and
//! `kestrel check-data` on a folder with one problem of each kind.

use image::{Rgb, RgbImage};
use kestrel::data::check::check_data;
use kestrel::data::{DataBlock, Labeller, Source, Splitter};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kestrel");

/// A 48×48 image of `class` (0 red square, 1 green disc, 2 blue bar) at a position set by `k`.
fn shape(class: usize, k: u32, side: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(side, side, Rgb([230, 230, 230]));
    let (cx, cy) = (12 + (k * 7) % 24, 12 + (k * 11) % 24);
    for y in 0..side {
        for x in 0..side {
            let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
            let inside = match class { 0 => dx.abs() < 9 && dy.abs() < 9, 1 => dx * dx + dy * dy < 100, _ => dx.abs() < 14 && dy.abs() < 4 };
            if inside {
                img.put_pixel(x, y, [Rgb([200, 30, 30]), Rgb([30, 180, 40]), Rgb([30, 40, 200])][class.min(2)]);
            }
        }
    }
    img
}

const CLASSES: [&str; 3] = ["red", "green", "blue"];

/// `n` images per class named `<class>_<k>.png` in `dir`.
fn shapes_folder(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for (c, name) in CLASSES.iter().enumerate() {
        for k in 0..n {
            shape(c, k, 48).save(dir.join(format!("{name}_{k}.png"))).unwrap();
        }
    }
}

/// A temporary folder holding a `shapes` folder of `n` images per class ([`shapes_folder`]).
fn shapes_tmp(n: u32) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("shapes");
    shapes_folder(&images, n);
    (tmp, images)
}

fn kestrel(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env("OMP_NUM_THREADS", "2").env_remove("KESTREL_INTERRUPT_AFTER");
    for (k, v) in env { c.env(k, v); }
    let o = c.output().expect("run kestrel");
    eprintln!("--- kestrel {}\n{}{}", args.join(" "), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

/// `fine-tune` on the shapes: 29 training images, bs 8 → 3 batches per epoch, 1 frozen +
/// 1 unfrozen epoch, fixed lr (no sweep), precision pinned to fp32.
fn fine_tune_args<'a>(images: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["fine-tune", "--folder", images, "--label-re", r"^(.+)_\d+\.png$", "--arch", "resnet18", "--no-pretrained",
         "--presize", "40", "--size", "32", "--bs", "8", "--workers", "2", "--epochs", "1", "--freeze-epochs", "1",
         "--precision", "fp32", "--seed", "7", "--out", out]
}

/// `args` without the option `name` and its value.
fn without<'a>(mut args: Vec<&'a str>, name: &str) -> Vec<&'a str> {
    let i = args.iter().position(|a| *a == name).unwrap();
    args.drain(i..i + 2);
    args
}

/// [`fine_tune_args`] with `--bs` set to `bs`, plus `extra`.
fn with_bs<'a>(mut args: Vec<&'a str>, bs: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let i = args.iter().position(|a| *a == "--bs").unwrap();
    args[i + 1] = bs;
    args.extend_from_slice(extra);
    args
}

#[test]
fn fine_tune_writes_every_output_and_report_inlines_images() {
    let (tmp, images) = shapes_tmp(12);
    let out = tmp.path().join("run");
    // bs 4: 7 batches per epoch, so the sweep asked for by --lr-find (capped at the 14
    // training batches it precedes) is long enough for suggestions.
    let args = with_bs(fine_tune_args(images.to_str().unwrap(), out.to_str().unwrap()), "4", &["--lr-find"]);
    let o = kestrel(&args, &[]);
    assert!(o.status.success());
    let stdout = String::from_utf8_lossy(&o.stdout);
    let sweep: usize = stdout.lines().find_map(|l| l.strip_prefix("lr_find: ")).and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok()).expect("the sweep's length is printed");
    assert!((8..=14).contains(&sweep), "the sweep ({sweep} batches) is capped at the training's 2 × 7 batches");
    assert!(stdout.contains("epoch") && stdout.contains("error_rate"), "fastai's table is printed");
    assert!(stdout.contains("report: "), "says where the report is");
    for f in ["model.safetensors", "lr_find.png", "loss.png", "show_batch.png", "metrics.csv", "report.html", "confusion_matrix.png", "top_losses.png"] {
        assert!(out.join(f).is_file(), "{f} is written");
    }
    assert!(!out.join("checkpoint.pth").exists(), "a finished run leaves no resume checkpoint");
    for png in ["lr_find.png", "loss.png", "show_batch.png"] {
        let img = image::open(out.join(png)).unwrap();
        assert!(img.width() >= 64 && img.height() >= 64, "{png} is a real picture");
    }
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().filter(|l| !l.starts_with("epoch")).collect();
    assert_eq!(rows.len(), 2, "one frozen + one unfrozen epoch: {csv}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 6, "show_batch, lr_find, loss, confusion matrix, top losses and the reliability diagram inlined");
    assert!(html.contains("Most confused") && html.contains("Classification report"));
    assert!(!html.contains("src=\"http") && !html.contains("src=\"file"), "no external image");
    for s in ["resnet18", "Training (frozen body)", "Training (unfrozen)", "final error_rate"] {
        assert!(html.contains(s), "report shows {s}");
    }
    // The exported model predicts in another process, from the file alone.
    let photo = std::fs::read_dir(&images).unwrap().next().unwrap().unwrap().path();
    let model = out.join("model.safetensors");
    let p = kestrel(&["predict", model.to_str().unwrap(), photo.to_str().unwrap(), "--json", "--device", "cpu"], &[]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let line: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&p.stdout).lines().next().unwrap()).unwrap();
    assert!(line["label"].is_string() && line["top"].as_array().is_some_and(|t| !t.is_empty()), "{line}");
    let meta = kestrel::export::read_model_meta(&model).unwrap();
    assert_eq!(meta.card.training.unwrap().precision.as_deref(), Some("fp32"), "the model file records the precision");

    // The book's second sweep: from the trained model, unfrozen.
    let png = tmp.path().join("second.png");
    let o = kestrel(&["lr-find", "--folder", images.to_str().unwrap(), "--label-re", r"^(.+)_\d+\.png$", "--presize", "40",
                      "--size", "32", "--bs", "4", "--workers", "2", "--precision", "fp32", "--num-it", "12",
                      "--from", model.to_str().unwrap(), "--unfreeze", "--out", png.to_str().unwrap()], &[]);
    assert!(o.status.success());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("trained resnet18 (unfrozen)"), "{stdout}");
    for s in ["valley", "minimum/10", "steep", "slide", "one order of magnitude below the minimum",
              "the last point where the loss clearly decreases"] {
        assert!(stdout.contains(s), "lr-find prints {s}");
    }
    let valley: f64 = stdout.lines().find_map(|l| l.trim().strip_prefix("valley")).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(valley > 1e-7 && valley < 10.0, "valley {valley} inside the sweep");
    let img = image::open(&png).unwrap();
    assert!(img.width() >= 64 && img.height() >= 64, "the plot is a real picture");
    // Data with other classes than the model's is refused, naming both.
    let (_tmp2, other) = shapes_tmp(4);
    std::fs::rename(other.join("red_0.png"), other.join("purple_0.png")).unwrap();
    let o = kestrel(&["lr-find", "--folder", other.to_str().unwrap(), "--label-re", r"^(.+)_\d+\.png$", "--presize", "40",
                      "--size", "32", "--bs", "4", "--num-it", "12", "--from", model.to_str().unwrap(), "--out", png.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the model's 3 classes") && err.contains("data's 4 classes"), "{err}");
}

/// The recipe options in one run (label smoothing, MixUp, EMA, TTA, wd, lr_mult and a time
/// budget): the model file carries the fitted temperature, the report shows the ECE and the
/// reliability diagram, summary.json has the numbers, and `predict --min-prob` answers
/// `unknown` exactly when no class reaches the probability.
#[test]
fn fine_tune_recipe_options_calibrate_and_predict_unknown() {
    let (tmp, images) = shapes_tmp(12);
    let out = tmp.path().join("run");
    // --time replaces --epochs.
    let mut args = without(fine_tune_args(images.to_str().unwrap(), out.to_str().unwrap()), "--epochs");
    args.extend(["--label-smoothing", "--mixup", "--ema", "--tta", "--wd", "0.05", "--lr-mult", "10", "--time", "4s"]);
    let o = kestrel(&args, &[]);
    assert!(o.status.success());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let t = summary["calibration"]["temperature"].as_f64().unwrap();
    assert!(t > 0.0 && summary["error_rate_tta"].as_f64().is_some_and(|e| (0.0..=1.0).contains(&e)), "{summary}");
    assert!(summary["unfrozen_epochs"].as_u64().unwrap() >= 1);
    let meta = kestrel::export::read_model_meta(&out.join("model.safetensors")).unwrap();
    assert_eq!(meta.card.calibration.as_ref().map(|c| c.temperature), Some(t), "the model file carries the temperature");
    assert!(out.join("reliability.png").is_file());
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for s in ["ECE (15 bins)", "Reliability diagram", "LabelSmoothingCrossEntropyFlat(eps=0.1)", "MixUp / CutMix alpha", "time budget", "with TTA"] {
        assert!(html.contains(s), "report shows {s}");
    }
    let model = out.join("model.safetensors");
    for p in ["0", "0.9"] {
        let r = kestrel(&["predict", model.to_str().unwrap(), images.to_str().unwrap(), "--json", "--device", "cpu", "--min-prob", p], &[]);
        assert!(r.status.success());
        let p: f64 = p.parse().unwrap();
        for line in String::from_utf8_lossy(&r.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let top = v["top"][0]["prob"].as_f64().unwrap();
            // probabilities are printed rounded to 4 decimals
            if (top - p).abs() > 1e-4 {
                assert_eq!(v["label"] == "unknown", top < p, "{line}");
                assert_eq!(v["index"].is_null(), top < p, "{line}");
            }
        }
    }
    let bad = kestrel(&["predict", model.to_str().unwrap(), images.to_str().unwrap(), "--min-prob", "1.5"], &[]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--min-prob 1.5"));
}

#[test]
fn interrupt_writes_checkpoint_and_printed_command_resumes() {
    let (tmp, images) = shapes_tmp(12);
    let out = tmp.path().join("run");
    // Interrupt in the unfrozen phase after its 2nd batch: 3 training batches per epoch
    // (29 training images, bs 8, drop_last), 1 frozen epoch.
    let o = kestrel(&fine_tune_args(images.to_str().unwrap(), out.to_str().unwrap()), &[("KESTREL_INTERRUPT_AFTER", "5")]);
    assert_eq!(o.status.code(), Some(130), "an interrupted run exits with 130, as after Ctrl-C");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(out.join("checkpoint.pth").is_file());
    let cmd = stderr.lines().skip_while(|l| !l.contains("resume with:")).nth(1).expect("the resume command is printed").trim();
    assert!(cmd.starts_with(&format!("{BIN} fine-tune ")) && cmd.ends_with("--resume") && cmd.contains("--lr "), "the program as typed: {cmd}");
    let status = Command::new("sh").arg("-c").arg(cmd).env_remove("KESTREL_INTERRUPT_AFTER").output().unwrap();
    eprintln!("{}{}", String::from_utf8_lossy(&status.stdout), String::from_utf8_lossy(&status.stderr));
    assert!(status.status.success(), "the printed command resumes and finishes");
    assert!(String::from_utf8_lossy(&status.stdout).contains("resuming at phase 1, epoch 0, batch 2"));
    assert!(out.join("report.html").is_file() && out.join("model.safetensors").is_file());
    assert!(!out.join("checkpoint.pth").exists());
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().filter(|l| !l.starts_with("epoch")).count(), 2, "frozen epoch before the interrupt + resumed epoch: {csv}");
}

#[test]
fn show_batch_with_augmentation_draws_the_grid() {
    let (tmp, images) = shapes_tmp(6);
    let out = tmp.path().join("unique.png");
    let o = kestrel(&["data", "show-batch", "--folder", images.to_str().unwrap(), "--label-re", r"^(.+)_\d+\.png$",
                      "--presize", "40", "--bs", "4", "--out", out.to_str().unwrap(), "--unique", "--size", "32",
                      "--nrows", "2", "--ncols", "2"], &[]);
    assert!(o.status.success());
    let img = image::open(&out).unwrap();
    assert!(img.width() >= 64 && img.height() >= 64, "a 2x2 grid of 32-px images with captions");
    // 18 photos, fewer than the default --bs of 32: the grid is still drawn (one batch of
    // the 9 photos shown).
    let grid = tmp.path().join("grid.png");
    let o = kestrel(&["data", "show-batch", "--folder", images.to_str().unwrap(), "--label-re", r"^(.+)_\d+\.png$",
                      "--presize", "40", "--size", "32", "--out", grid.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(&grid).unwrap();
    assert!(img.width() >= 96 && img.height() >= 96, "a 3x3 grid of 32-px images");
}

/// metrics.csv without its `time` column.
fn metrics_without_time(run: &Path) -> Vec<String> {
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    csv.lines().map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string()).collect()
}

#[test]
fn seeded_fine_tune_repeats_exactly() {
    let (tmp, images) = shapes_tmp(12);
    let runs: Vec<Vec<String>> = ["a", "b"]
        .iter()
        .map(|name| {
            let out = tmp.path().join(name);
            assert!(kestrel(&fine_tune_args(images.to_str().unwrap(), out.to_str().unwrap()), &[]).status.success());
            metrics_without_time(&out)
        })
        .collect();
    assert_eq!(runs[0].iter().filter(|l| !l.starts_with("epoch")).count(), 2, "two epochs: {:?}", runs[0]);
    assert_eq!(runs[0], runs[1], "same seed, same losses and metrics to the last digit");
}

/// A run whose loss diverges stops with an error that says so and what to do, and
/// exports no model (which would hold NaN weights and metrics).
#[test]
fn diverging_run_stops_and_exports_nothing() {
    let (tmp, images) = shapes_tmp(12);
    let out = tmp.path().join("run");
    let o = kestrel(&with_bs(fine_tune_args(images.to_str().unwrap(), out.to_str().unwrap()), "8", &["--lr", "1e6"]), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("training diverged") && stderr.contains("TerminateOnNaN") && stderr.contains("--lr 1e5"), "{stderr}");
    assert!(!out.join("model.safetensors").exists(), "no model file from a diverged run");
}

/// Options that cannot work are refused before anything is written: `--size` above
/// `--presize`, `--presize 0`.
#[test]
fn size_above_presize_is_refused_up_front() {
    let (tmp, images) = shapes_tmp(4);
    let out = tmp.path().join("run");
    let mut args = fine_tune_args(images.to_str().unwrap(), out.to_str().unwrap());
    let i = args.iter().position(|a| *a == "--size").unwrap();
    args[i + 1] = "48";
    let o = kestrel(&args, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("--size 48 is larger than --presize 40") && stderr.contains("--presize 48 or more"), "{stderr}");
    assert!(!out.join("show_batch.png").exists(), "refused before any output");
    let i = args.iter().position(|a| *a == "--presize").unwrap();
    args[i + 1] = "0";
    let o = kestrel(&args, &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--presize"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Options that would be silently ignored or cannot work are refused by the argument
/// parser, naming them: `--bs 0` (fine-tune and predict), `--topk 0`, `--time` with
/// `--epochs`, `--valid-pct` with `--valid-col`; `--lr -1` is read as a value and refused.
#[test]
fn contradictory_or_empty_options_are_refused() {
    let (tmp, images) = shapes_tmp(4);
    let out = tmp.path().join("run");
    let args = fine_tune_args(images.to_str().unwrap(), out.to_str().unwrap());
    let refused = |args: &[&str], names: &[&str]| {
        let o = kestrel(args, &[]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} was accepted");
        for n in names {
            assert!(stderr.contains(n), "{n} not named: {stderr}");
        }
    };
    refused(&with_bs(args.clone(), "0", &[]), &["--bs", "at least 1"]);
    refused(&[without(args.clone(), "--presize").as_slice(), &["--presize", "5000"]].concat(), &["--presize", "2048"]);
    refused(&with_bs(args.clone(), "1", &[]), &["--bs 1", "at least 2"]);
    refused(&[args.as_slice(), &["--time", "5s"]].concat(), &["--time", "--epochs"]);
    refused(&[args.as_slice(), &["--csv", "x.csv", "--valid-col", "is_valid", "--valid-pct", "0.3"]].concat(), &["--valid-pct", "--valid-col"]);
    refused(&["predict", "m.safetensors", "x.png", "--bs", "0"], &["--bs", "at least 1"]);
    refused(&["predict", "m.safetensors", "x.png", "--topk", "0"], &["--topk", "at least 1"]);
    refused(&["lr-find", "--folder", images.to_str().unwrap(), "--num-it", "5"], &["--num-it", "at least 10"]);
    // A negative learning rate is the value of --lr, not an unknown option.
    refused(&[args.as_slice(), &["--lr", "-1"]].concat(), &["--lr -1", "positive number"]);
    // Options that the data makes meaningless, refused once it is read.
    refused(&[args.as_slice(), &["--thresh", "0.3"]].concat(), &["--thresh 0.3", "single-label", "--min-prob"]);
    refused(&[args.as_slice(), &["--label-from", "parent"]].concat(), &["--label-re", "parent folders", "--label-from name-re"]);
    let csv = tmp.path().join("labels.csv");
    let rows: Vec<String> = std::fs::read_dir(&images).unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .map(|n| format!("{n},{}", n.split('_').next().unwrap()))
        .collect();
    std::fs::write(&csv, format!("fname,label\n{}\n", rows.join("\n"))).unwrap();
    refused(&[args.as_slice(), &["--csv", csv.to_str().unwrap()]].concat(), &["--label-re", "column label of --csv"]);
    let inside = images.join("run");
    refused(&fine_tune_args(images.to_str().unwrap(), inside.to_str().unwrap()), &["inside the data folder"]);
    assert!(!inside.exists());
    let missing = tmp.path().join("missing");
    refused(&fine_tune_args(missing.to_str().unwrap(), out.to_str().unwrap()), &["missing"]);
    assert!(!out.exists(), "nothing written, not even an empty --out folder");
    // The same CSV without --label-re trains from its column.
    let o = kestrel(&[without(args.clone(), "--label-re").as_slice(), &["--csv", csv.to_str().unwrap()]].concat(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // 2 training batches in all: too few for the sweep of --lr auto, which never runs longer
    // than the training (it chose the sweep's first lr, 1e-7, before).
    refused(&[args.as_slice(), &["--lr", "auto"]].concat(), &["--lr auto", "trains 2 batches", "fixed --lr"]);
}

/// `--epochs 0`: the frozen epoch only; its results are the run's (fastai's `fine_tune(0)`
/// would clear them with an empty unfrozen fit).
#[test]
fn zero_unfrozen_epochs_keep_the_frozen_results() {
    let (tmp, images) = shapes_tmp(12);
    let out = tmp.path().join("run");
    let mut args = with_bs(fine_tune_args(images.to_str().unwrap(), out.to_str().unwrap()), "8", &["--lr", "2e-3"]);
    let i = args.iter().position(|a| *a == "--epochs").unwrap();
    args[i + 1] = "0";
    let o = kestrel(&args, &[]);
    assert!(o.status.success());
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "one table, one epoch: {csv}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["unfrozen_epochs"].as_u64(), Some(0));
    assert!(summary["error_rate"].as_f64().is_some_and(|e| (0.0..=1.0).contains(&e)), "{summary}");
    assert!(out.join("loss.png").exists() && out.join("report.html").exists());
}

#[test]
fn fixed_lr_runs_no_sweep() {
    let (tmp, images) = shapes_tmp(12);
    let out = tmp.path().join("run");
    // The folder of an earlier run with a sweep: its plot must not reach this run's report.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(images.join("red_0.png"), out.join("lr_find.png")).unwrap();
    let o = kestrel(&with_bs(fine_tune_args(images.to_str().unwrap(), out.to_str().unwrap()), "8", &["--lr", "2e-3"]), &[]);
    assert!(o.status.success());
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!stdout.contains("lr_find") && !stderr.contains("lr_find"), "no sweep is run or mentioned");
    assert!(!out.join("lr_find.png").exists(), "no lr_find plot without a sweep (an earlier run's is removed)");
    // The training epochs are the only training batches: 2 epochs × 3 batches, measured per epoch.
    let epochs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("epoch usage:")).collect();
    assert_eq!(epochs.len(), 2, "{stdout}");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().filter(|l| !l.starts_with("epoch")).count(), 2, "{csv}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("not run (a fixed --lr"), "the report says no sweep ran");
    assert!(html.contains(">fp32<") || html.contains("fp32 /"), "the report records the precision");
    assert!(stdout.contains("kernel") && stdout.contains("malloc: "), "CPU time and the allocator are reported: {stdout}");
}

/// A CSV dataset with one problem of each kind.
fn crafted(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut rows = vec!["fname,is_valid".to_string()];
    let mut add = |name: &str, valid: bool| rows.push(format!("{name},{valid}"));
    for k in 0..4 {
        for (c, name) in CLASSES.iter().take(2).enumerate() {
            shape(c, k, 48).save(dir.join(format!("{name}_{k}.png"))).unwrap();
            add(&format!("{name}_{k}.png"), k == 3);
        }
    }
    shape(2, 0, 48).save(dir.join("blue_0.png")).unwrap(); // label only in validation
    add("blue_0.png", true);
    std::fs::write(dir.join("red_9.png"), b"\x89PNG\r\n\x1a\n not really").unwrap(); // corrupt
    add("red_9.png", false);
    std::fs::copy(dir.join("red_1.png"), dir.join("red_5.png")).unwrap(); // duplicate
    add("red_5.png", false);
    shape(1, 5, 16).save(dir.join("green_7.png")).unwrap(); // tiny
    add("green_7.png", false);
    shape(1, 6, 48).save(dir.join("oops.png")).unwrap(); // regex miss
    add("oops.png", false);
    let csv = dir.join("labels.csv");
    std::fs::write(&csv, rows.join("\n")).unwrap();
    csv
}

#[test]
fn check_data_reports_each_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("crafted");
    let csv = crafted(&dir);
    let block = DataBlock::new(
        Source::Csv { file: csv.clone(), fn_col: "fname".into(), pref: None, suffix: String::new() },
        Labeller::name_regex(r"^(.+)_\d+\.png$").unwrap(),
    ).splitter(Splitter::Col("is_valid".into())).workers(2);
    let r = check_data(&block, 32).unwrap();
    assert_eq!(r.n_items, 13);
    assert_eq!(r.counts, vec![("blue".into(), 0, 1), ("green".into(), 4, 1), ("red".into(), 5, 1)]);
    assert_eq!(r.valid_only, vec!["blue".to_string()]);
    assert_eq!(r.undecodable.len(), 1);
    assert!(r.undecodable[0].0.ends_with("red_9.png"));
    assert_eq!(r.label_misses.len(), 1);
    assert!(r.label_misses[0].0.ends_with("oops.png") && r.label_misses[0].1.contains("does not match"));
    assert_eq!(r.duplicates, vec![vec![dir.join("red_1.png"), dir.join("red_5.png")]]);
    // The same file listed twice, in training and in validation: a duplicate (leakage).
    let twice = dir.join("twice.csv");
    // And a copy of red_1.png labelled green by its name: one photo under two labels.
    std::fs::copy(dir.join("red_1.png"), dir.join("green_8.png")).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap() + "\ngreen_2.png,true\ngreen_8.png,false";
    std::fs::write(&twice, text).unwrap();
    let block2 = DataBlock::new(
        Source::Csv { file: twice, fn_col: "fname".into(), pref: None, suffix: String::new() },
        Labeller::name_regex(r"^(.+)_\d+\.png$").unwrap(),
    ).splitter(Splitter::Col("is_valid".into())).workers(2);
    let r2 = check_data(&block2, 32).unwrap();
    assert!(r2.duplicates.contains(&vec![dir.join("green_2.png"), dir.join("green_2.png")]), "{:?}", r2.duplicates);
    assert!(r2.to_string().contains("a file listed more than once"), "{r2}");
    assert_eq!(r2.leaks, vec![vec![dir.join("green_2.png"), dir.join("green_2.png")]]);
    assert_eq!(r2.conflicting_labels.len(), 1, "{:?}", r2.conflicting_labels);
    let text = r2.to_string();
    assert!(text.contains("the same photo in training and in validation") && text.contains("one photo under different labels")
            && text.contains("green_8.png (green)") && text.contains("red_1.png (red)"), "{text}");
    assert_eq!(r2.n_problems(), r.n_problems() + 1, "the label conflict is a problem");
    assert_eq!(r.tiny, vec![(dir.join("green_7.png"), 16, 16)]);
    assert_eq!((r.n_problems(), r.n_warnings()), (3, 2), "undecodable, miss, valid-only; duplicate, tiny");
    assert!(r.empty.is_empty());

    let o = kestrel(&["check-data", "--csv", csv.to_str().unwrap(), "--label-from", "name-re", "--label-re", r"^(.+)_\d+\.png$",
                      "--valid-col", "is_valid", "--size", "32"], &[]);
    assert!(!o.status.success(), "problems give a non-zero exit");
    let stdout = String::from_utf8_lossy(&o.stdout);
    for s in ["undecodable files (1)", "labeller misses (1)", "labels only in the validation set (1)", "warning: duplicates (same content) (1)",
              "warning: tiny images (smaller than 32 px; upsampled by the presize) (1)", "green_7.png: 16×16", "3 problems found, 2 warnings"] {
        assert!(stdout.contains(s), "report has '{s}'");
    }
    let clean = tmp.path().join("clean");
    shapes_folder(&clean, 3);
    let o = kestrel(&["check-data", "--folder", clean.to_str().unwrap(), "--label-re", r"^(.+)_\d+\.png$", "--size", "32"], &[]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("no problems found"));
    // An empty folder is a problem, not a clean bill of health.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = kestrel(&["check-data", "--folder", empty.to_str().unwrap(), "--size", "32"], &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stdout).contains("no items"));
}

/// `fine-tune --time 60s` (issue 14's check): `fine_tune` — frozen epoch, the unfrozen
/// epochs fitted to the budget, validation included — ends within 60 s ± its longest epoch
/// (metrics.csv times have 1 s resolution: + 1 s).
#[test]
fn time_60s_ends_within_a_minute_plus_one_epoch() {
    let (tmp, images) = shapes_tmp(12);
    let out = tmp.path().join("run");
    let mut args = without(fine_tune_args(images.to_str().unwrap(), out.to_str().unwrap()), "--epochs");
    args.extend(["--time", "60s", "--tta", "false", "--no-calibrate"]);
    let o = kestrel(&args, &[]);
    assert!(o.status.success());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let fit = summary["fit_secs"].as_f64().unwrap();
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    // Each epoch row ends with its time, mm:ss.
    let secs: Vec<f64> = csv.lines().filter(|l| !l.starts_with("epoch")).map(|l| {
        let t = l.rsplit(',').next().unwrap();
        let (m, s) = t.split_once(':').unwrap();
        m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
    }).collect();
    let longest = secs.iter().copied().fold(0.0, f64::max) + 1.0;
    assert!(summary["unfrozen_epochs"].as_u64().unwrap() >= 2, "{summary}");
    assert!((fit - 60.0).abs() <= longest, "fine_tune took {fit:.1} s for --time 60s (longest epoch {longest} s, {} epochs)", secs.len());
}

/// A reader that goes away (`kestrel check-data | head -1`) ends kestrel quietly, as any
/// Unix tool, instead of a panic in `println!` ("failed printing to stdout: Broken pipe",
/// exit 101 before).
#[test]
fn a_closed_pipe_ends_quietly() {
    let (tmp, images) = shapes_tmp(12);
    let err = tmp.path().join("stderr.txt");
    for cmd in ["check-data", "data summary"] {
        // `true` exits at once without reading: kestrel's first line meets a closed pipe.
        let script = format!("{BIN} {cmd} --folder '{}' --label-re '^(.+)_\\d+\\.png$' 2>'{}' | true", images.display(), err.display());
        let o = Command::new("bash").arg("-c").arg(format!("{script}; echo \"${{PIPESTATUS[0]}}\"")).output().unwrap();
        let status = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let stderr = std::fs::read_to_string(&err).unwrap();
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{cmd}: {stderr}");
        // Killed by SIGPIPE (128 + 13), as `yes | true` is; 0 if it finished first.
        assert!(status == "141" || status == "0", "{cmd}: exit status {status}");
    }
}

/// check-data: the lines of --valid-list that name no image are counted (fastai's
/// FileSplitter leaves them out silently), and one class is a problem, as fine-tune
/// refuses it.
#[test]
fn check_data_names_unmatched_valid_list_lines_and_a_single_class() {
    let (tmp, images) = shapes_tmp(4);
    let list = tmp.path().join("valid.txt");
    std::fs::write(&list, "red_0.png\nshapes/green_1.png\nimages/blue_2.png\nred_99.png\n").unwrap();
    let re = r"^(.+)_\d+\.png$";
    let o = kestrel(&["check-data", "--folder", images.to_str().unwrap(), "--label-re", re, "--valid-list", list.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("2 of the 4 lines") && stderr.contains("images/blue_2.png"), "{stderr}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 validation"), "the matched lines split");
    let o = kestrel(&["check-data", "--folder", images.to_str().unwrap(), "--label-re", r"^.+_\d+\.(png)$"], &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("only 1 class") && stdout.contains("1 problem"), "{stdout}");
}
