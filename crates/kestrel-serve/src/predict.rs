//! `kestrel-serve predict MODEL.onnx FILES|FOLDERS…`: the JSON lines of `kestrel predict
//! --json`, from the ONNX model.

use crate::model::{OnnxModel, preprocess};
use anyhow::bail;
use kestrel_image::answer::{UNKNOWN, is_known, labels_above, multi_label_name};
use kestrel_image::batches::map_files_in_batches;
use kestrel_image::decode::DecodeLimits;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One JSON line as `kestrel predict --json` prints it: `{"file", "label", "index",
/// "top": [{"label", "index", "prob"}]}` (plus `"labels"` for a multi-label model, see
/// [`answer`]), probabilities rounded to 4 decimals.
pub fn json_line(file: &str, probs: &[f32], vocab: &[String], thresh: Option<f64>, topk: usize, min_prob: f64) -> serde_json::Value {
    let mut j = answer(probs, vocab, thresh, topk, min_prob);
    j.as_object_mut().expect("an object").insert("file".into(), file.into());
    j
}

/// The answer for one photo's probabilities, as `kestrel predict --json` gives it:
/// `{"label", "index", "top"}` with the `topk` most probable classes as
/// `[{"label", "index", "prob"}]`, probabilities rounded to 4 decimals.
/// - Single-label (`thresh` None): the top class, or `unknown` with index `null` below
///   `min_prob` ([`kestrel_image::answer`]).
/// - Multi-label (`thresh`, the model's sigmoid threshold): every label above it, joined
///   by spaces (or `none`) in `label`, listed with their probabilities in `"labels"`;
///   index `null`; `min_prob` does not apply.
pub fn answer(probs: &[f32], vocab: &[String], thresh: Option<f64>, topk: usize, min_prob: f64) -> serde_json::Value {
    let entry = |i: usize, p: f32| serde_json::json!({"label": vocab[i], "index": i, "prob": (p as f64 * 1e4).round() / 1e4});
    let top_list = top_k(probs, topk.max(1));
    let top: Vec<serde_json::Value> = top_list.iter().map(|&(i, p)| entry(i, p)).collect();
    if let Some(t) = thresh {
        let above = labels_above(probs, t);
        let labels: Vec<serde_json::Value> = above.iter().map(|&i| entry(i, probs[i])).collect();
        return serde_json::json!({"label": multi_label_name(&above, vocab), "index": null, "top": top, "labels": labels});
    }
    let (best, p) = top_list[0];
    if is_known(p, min_prob) {
        serde_json::json!({"label": vocab[best], "index": best, "top": top})
    } else {
        serde_json::json!({"label": UNKNOWN, "index": null, "top": top})
    }
}

/// The `k` most probable classes (index, probability), most probable first, ties by index.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, probs[i])).collect()
}

/// Probabilities of every photo of `paths`, in order: decoded and presized on `workers`
/// threads while the model runs batches of `bs`. A photo that cannot be read or decoded
/// gets its error (naming it); the others are still predicted.
pub fn predict_paths(model: &mut OnnxModel, paths: &[PathBuf], bs: usize, workers: usize) -> Vec<anyhow::Result<Vec<f32>>> {
    let bs = bs.max(1);
    let tfm = model.info.item_tfm.clone();
    let limits = DecodeLimits::default();
    let load = |p: &Path| -> anyhow::Result<Vec<u8>> {
        let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
        preprocess(&bytes, &tfm, &limits).map_err(|e| anyhow::anyhow!("cannot decode {}: {e:#}", p.display()))
    };
    map_files_in_batches(paths, bs, workers, load, |items| {
        let n = items.len();
        model.probs(items.concat(), n)
    })
}

/// Predicts every photo of `inputs` (files, or folders searched recursively) and prints
/// one JSON line each, in order (an unreadable photo gets `{"file", "error"}`).
///
/// Errors: `min_prob` outside [0, 1]; a path that does not exist; no photos; after
/// printing everything, "N of M photos could not be predicted".
pub fn run(model: &mut OnnxModel, inputs: &[PathBuf], bs: usize, workers: usize, topk: usize, min_prob: f64) -> anyhow::Result<()> {
    kestrel_image::answer::check_min_prob(min_prob)?;
    let paths = kestrel_image::files::expand_image_paths(inputs)?;
    if paths.is_empty() {
        bail!("no photos found in {}", inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let results = predict_paths(model, &paths, bs, workers);
    let mut out = std::io::stdout().lock();
    let mut failed = 0usize;
    for (path, r) in paths.iter().zip(&results) {
        let file = path.display().to_string();
        let line = match r {
            Ok(probs) => json_line(&file, probs, &model.info.vocab, model.info.thresh, topk, min_prob),
            Err(e) => {
                failed += 1;
                serde_json::json!({"file": file, "error": format!("{e:#}")})
            }
        };
        writeln!(out, "{line}")?;
    }
    if failed > 0 {
        bail!("{failed} of {} photos could not be predicted (see the messages above)", paths.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_min_prob_the_answer_is_unknown_with_the_classes_still_listed() {
        let vocab: Vec<String> = ["cat", "dog", "bird"].map(String::from).to_vec();
        let probs = [0.2, 0.45, 0.35];
        let j = json_line("a.jpg", &probs, &vocab, None, 2, 0.5);
        assert_eq!(j["label"], "unknown");
        assert!(j["index"].is_null());
        assert_eq!(j["top"][0]["label"], "dog");
        assert_eq!(j["top"][1]["prob"], 0.35);
        let j = json_line("a.jpg", &probs, &vocab, None, 2, 0.4);
        assert_eq!((j["label"].as_str(), j["index"].as_u64()), (Some("dog"), Some(1)));
        assert_eq!(json_line("a.jpg", &probs, &vocab, None, 1, 0.0)["label"], "dog");
    }

    #[test]
    fn a_multi_label_model_answers_every_label_above_its_threshold() {
        let vocab: Vec<String> = ["cat", "dog", "pug"].map(String::from).to_vec();
        let probs = [0.1, 0.3, 0.9];
        // kestrel predict's answer for these sigmoids at thresh 0.2; --min-prob is ignored.
        let j = json_line("a.jpg", &probs, &vocab, Some(0.2), 1, 0.95);
        assert_eq!(j["label"], "dog pug");
        assert!(j["index"].is_null());
        assert_eq!(j["labels"].as_array().unwrap().iter().map(|l| l["label"].as_str().unwrap()).collect::<Vec<_>>(), ["dog", "pug"]);
        assert_eq!(j["labels"][0]["prob"], 0.3);
        assert_eq!(j["top"].as_array().unwrap().len(), 1);
        assert_eq!(json_line("a.jpg", &probs, &vocab, Some(0.95), 1, 0.5)["label"], "none");
    }
}
