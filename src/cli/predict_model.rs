//! Prediction with an exported model: what `kestrel predict MODEL PATH...` runs (the
//! `predict` subcommand dispatches here when it is not given `--imagenet`).

use crate::export::{Prediction, Predictor, expand_image_paths};
use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Device;

/// Options of `kestrel predict MODEL PATH...`.
#[derive(Debug, Clone)]
pub struct PredictModelOptions {
    /// Number of most probable classes to show per photo (`--topk`, default 3).
    pub topk: usize,
    /// Also write every prediction to this CSV file (`--csv`): file, label, index, prob, then `top`.
    pub csv: Option<PathBuf>,
    /// Print one JSON object per photo per line instead of text (`--json`), as `predict
    /// --imagenet --json`: `{"file", "label", "index", "top": [{"label", "index", "prob"}]}`
    /// (probabilities to 4 decimals), and for a multi-label model `"labels"`: every label
    /// above the threshold (`[]` and `"label": "none"` when there is none);
    /// an unreadable photo gives `{"file", "error"}`.
    pub json: bool,
    /// Test-time augmentation (`--tta`, fastai `Learner.tta(n=4, beta=0.25)`).
    pub tta: bool,
    /// Device to run on (`--device`).
    pub device: Device,
    /// Photos per batch (`--bs`, default 64).
    pub bs: usize,
    /// Decoding threads (`--workers`).
    pub workers: usize,
    /// Answer [`UNKNOWN`] when the highest probability is below this (`--min-prob`, in
    /// [0, 1]; default [`DEFAULT_MIN_PROB`]; 0 never answers unknown).
    pub min_prob: f64,
}

pub use kestrel_image::answer::{DEFAULT_MIN_PROB, UNKNOWN};

impl Default for PredictModelOptions {
    fn default() -> Self {
        Self {
            topk: 3,
            csv: None,
            json: false,
            tta: false,
            device: Device::Cpu,
            bs: 64,
            workers: crate::util::threads::default_workers(),
            min_prob: DEFAULT_MIN_PROB,
        }
    }
}

/// Predicts every photo of `inputs` (files, or folders searched recursively) with the
/// exported model `model` and prints the predictions to stdout. A photo that cannot be
/// read is reported (stderr in text mode, an `error` line in JSON mode) and the others
/// are still predicted.
///
/// A photo whose highest probability is below `opts.min_prob` is answered [`UNKNOWN`]
/// (label `unknown`, index empty in the CSV and `null` in JSON; `top` still lists the classes).
///
/// Errors: `min_prob` outside [0, 1]; the model cannot be loaded; no photos; the CSV cannot be written; and, after
/// printing everything, "N of M photos could not be predicted" when some failed.
pub fn run(model: &Path, inputs: &[PathBuf], opts: &PredictModelOptions) -> crate::Result<()> {
    kestrel_image::answer::check_min_prob(opts.min_prob)?;
    let predictor = Predictor::load(model, opts.device)?;
    if let Some(t) = predictor.thresh()
        && opts.min_prob != DEFAULT_MIN_PROB
    {
        eprintln!("note: --min-prob does not apply to a multi-label model: its threshold {t} decides (every label above it, or none)");
    }
    let paths = expand_image_paths(inputs)?;
    if paths.is_empty() {
        bail!("no photos found in {}", inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let results = if opts.tta {
        let aug = predictor.augmentation()?;
        predictor.tta_files(&paths, &aug, &Default::default(), opts.bs, opts.workers)
    } else {
        predictor.predict_files(&paths, opts.bs, opts.workers)
    };
    let vocab = predictor.vocab();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["file", "label", "index", "prob", "top"])?;
    let (mut failed, mut unknown) = (0, 0);
    for (path, r) in paths.iter().zip(&results) {
        match r {
            Ok(p) => {
                let top = p.top(opts.topk.max(1));
                let known = is_known(p, opts.min_prob);
                let label = if known { p.label.as_str() } else { UNKNOWN };
                unknown += usize::from(!known);
                if opts.json {
                    writeln!(out, "{}", json_line(path, p, known, &top, vocab))?;
                } else if let Some(labels) = &p.labels {
                    // Multi-label: every label above the threshold with its probability, or
                    // none, said explicitly with the threshold.
                    let shown: Vec<String> = labels.iter().map(|&i| format!("{} {:.4}", vocab[i], p.probs[i])).collect();
                    let shown = if shown.is_empty() {
                        format!("no label above {}", predictor.thresh().unwrap_or(0.5))
                    } else {
                        shown.join(", ")
                    };
                    writeln!(out, "{}\t{}\t{}", path.display(), p.label, shown)?;
                } else {
                    let shown: Vec<String> = top.iter().map(|&(i, pr)| format!("{} {pr:.4}", vocab[i])).collect();
                    writeln!(out, "{}\t{}\t{}", path.display(), label, shown.join(", "))?;
                }
                let top_s: Vec<String> = top.iter().map(|&(i, pr)| format!("{}:{pr:.6}", vocab[i])).collect();
                let index = if known && p.labels.is_none() { p.index.to_string() } else { String::new() };
                csv.write_record([path.display().to_string(), label.to_string(), index,
                                  format!("{:.6}", p.probs[p.index]), top_s.join(" ")])?;
            }
            Err(e) => {
                failed += 1;
                if opts.json {
                    writeln!(out, "{}", serde_json::json!({"file": path.display().to_string(), "error": format!("{e:#}")}))?;
                } else {
                    eprintln!("error: {e:#}");
                }
            }
        }
    }
    if let Some(p) = &opts.csv {
        let bytes = csv.into_inner().context("cannot assemble the CSV")?;
        crate::util::atomic::write_atomic(p, &bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if unknown > 1 && 2 * unknown > paths.len() {
        // Most often a model trained briefly, whose probabilities are spread thin.
        eprintln!("note: {unknown} of {} photos are answered {UNKNOWN}: no class reached --min-prob {} \
                   (--min-prob 0 always names the top class; the top classes are listed either way)", paths.len(), opts.min_prob);
    }
    if failed > 0 {
        bail!("{failed} of {} photos could not be predicted (see the messages above)", paths.len());
    }
    Ok(())
}

/// True when the prediction's highest probability reaches `min_prob`. A multi-label
/// prediction is always known: its threshold already decides (an empty label set is "none").
pub fn is_known(p: &Prediction, min_prob: f64) -> bool {
    p.labels.is_some() || kestrel_image::answer::is_known(p.probs[p.index], min_prob)
}

fn json_line(path: &Path, p: &Prediction, known: bool, top: &[(usize, f32)], vocab: &[String]) -> serde_json::Value {
    let top: Vec<serde_json::Value> =
        top.iter().map(|&(i, pr)| serde_json::json!({"label": vocab[i], "index": i, "prob": (pr as f64 * 1e4).round() / 1e4})).collect();
    // Multi-label: the labels are in `labels`; no one index is the answer.
    let (label, index) = match (known, &p.labels) {
        (true, None) => (p.label.as_str(), serde_json::json!(p.index)),
        (true, Some(_)) => (p.label.as_str(), serde_json::Value::Null),
        (false, _) => (UNKNOWN, serde_json::Value::Null),
    };
    let mut j = serde_json::json!({"file": path.display().to_string(), "label": label, "index": index, "top": top});
    if let Some(labels) = &p.labels {
        j["labels"] = labels.iter().map(|&i| serde_json::json!({"label": vocab[i], "index": i, "prob": (p.probs[i] as f64 * 1e4).round() / 1e4})).collect();
    }
    j
}

