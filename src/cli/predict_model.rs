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
}

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
        }
    }
}

/// Predicts every photo of `inputs` (files, or folders searched recursively) with the
/// exported model `model` and prints the predictions to stdout. A photo that cannot be
/// read is reported (stderr in text mode, an `error` line in JSON mode) and the others
/// are still predicted.
///
/// Errors: the model cannot be loaded; no photos; the CSV cannot be written; and, after
/// printing everything, "N of M photos could not be predicted" when some failed.
pub fn run(model: &Path, inputs: &[PathBuf], opts: &PredictModelOptions) -> crate::Result<()> {
    let predictor = Predictor::load(model, opts.device)?;
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
    let mut failed = 0;
    for (path, r) in paths.iter().zip(&results) {
        match r {
            Ok(p) => {
                let top = p.top(opts.topk.max(1));
                if opts.json {
                    writeln!(out, "{}", json_line(path, p, &top, vocab))?;
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
                    writeln!(out, "{}\t{}\t{}", path.display(), p.label, shown.join(", "))?;
                }
                let top_s: Vec<String> = top.iter().map(|&(i, pr)| format!("{}:{pr:.6}", vocab[i])).collect();
                csv.write_record([path.display().to_string(), p.label.clone(), p.index.to_string(),
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
    if failed > 0 {
        bail!("{failed} of {} photos could not be predicted (see the messages above)", paths.len());
    }
    Ok(())
}

fn json_line(path: &Path, p: &Prediction, top: &[(usize, f32)], vocab: &[String]) -> serde_json::Value {
    let top: Vec<serde_json::Value> =
        top.iter().map(|&(i, pr)| serde_json::json!({"label": vocab[i], "index": i, "prob": (pr as f64 * 1e4).round() / 1e4})).collect();
    let mut j = serde_json::json!({"file": path.display().to_string(), "label": p.label, "index": p.index, "top": top});
    if let Some(labels) = &p.labels {
        j["labels"] = labels.iter().map(|&i| serde_json::json!({"label": vocab[i], "index": i, "prob": (p.probs[i] as f64 * 1e4).round() / 1e4})).collect();
    }
    j
}

