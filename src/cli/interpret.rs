//! `kestrel interpret`: look at an exported model's mistakes on labelled photos (fastai
//! `ClassificationInterpretation`): confusion matrix, top losses, most confused pairs and
//! the classification report, written to `--out`.

use super::data::DataOpts;
use crate::export::Predictor;
use crate::interpret::{ClassificationInterpretation, plot_confusion_matrix, plot_top_losses, preds_from_probs};
use anyhow::{Context, bail};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;
use tch::Tensor;

/// Arguments of `kestrel interpret`.
#[derive(Args, Debug)]
pub struct InterpretArgs {
    /// The exported model file (written by `export` / `kestrel fine-tune`).
    pub model: PathBuf,
    /// The labelled photos, described as for `kestrel data` (the validation split is
    /// interpreted, as fastai's `ClassificationInterpretation.from_learner` does).
    #[command(flatten)]
    pub data: DataOpts,
    /// Interpret every item, not only the validation split.
    #[arg(long, conflicts_with = "on_test")]
    pub all: bool,
    /// Interpret the test folder (named by `--test`, default `test/`) of a `train/ valid/ test/`
    /// layout instead of the validation split: photos the model never saw in training
    /// nor in choosing its settings.
    #[arg(long = "on-test")]
    pub on_test: bool,
    /// Where to write confusion_matrix.png, top_losses.png, report.md,
    /// classification_report.txt and most_confused.csv (for a multi-label model:
    /// multilabel_report.txt with per-label precision and recall, and report.md).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of top losses to plot (fastai `plot_top_losses(k)`).
    #[arg(long, default_value_t = 9)]
    pub k: usize,
    /// Smallest count of a (actual, predicted) pair listed by most_confused (fastai `min_val`).
    #[arg(long, default_value_t = 1)]
    pub min_val: u64,
    /// Divide each confusion-matrix row by its total (fastai `normalize=True`).
    #[arg(long)]
    pub normalize: bool,
}

/// The labelled photos of `args` (validation split unless `--all` or `--on-test`): paths and labels.
fn labelled_items(args: &InterpretArgs) -> crate::Result<(Vec<PathBuf>, Vec<String>)> {
    if args.on_test {
        return args.data.test_set();
    }
    let ds = args.data.to_datablock()?.datasets()?;
    let idx: Vec<usize> = if args.all { (0..ds.labels.len()).collect() } else { ds.valid.clone() };
    Ok((idx.iter().map(|&i| ds.items.paths[i].clone()).collect(), idx.iter().map(|&i| ds.labels[i].clone()).collect()))
}

/// Runs `kestrel interpret`.
///
/// Errors: the model or photos cannot be read, labels outside the model's vocabulary, or
/// an output cannot be written. Photos that cannot be decoded are reported and left out.
pub fn run(args: InterpretArgs) -> crate::Result<()> {
    let device = crate::util::device::parse_device(&args.data.device)?;
    let predictor = Predictor::load(&args.model, device)?;
    let (paths, labels) = labelled_items(&args)?;
    if let Some(thresh) = predictor.thresh() {
        return run_multi_label(&args, &predictor, &paths, &labels, thresh);
    }
    let vocab = predictor.vocab().to_vec();
    let unknown: std::collections::BTreeSet<&str> =
        labels.iter().map(String::as_str).filter(|l| !vocab.iter().any(|v| v == l)).collect();
    if !unknown.is_empty() {
        let u: Vec<&str> = unknown.into_iter().collect();
        bail!("{} label(s) are not in the model's vocabulary of {} classes: {}", u.len(), vocab.len(), u[..u.len().min(5)].join(", "));
    }
    let workers = args.data.workers.unwrap_or_else(crate::util::threads::default_workers);
    let results = predictor.predict_files(&paths, args.data.bs, workers);
    let (mut probs, mut targets, mut items) = (Vec::new(), Vec::new(), Vec::new());
    let mut bad = 0;
    for ((p, l), r) in paths.iter().zip(&labels).zip(results) {
        match r {
            Ok(pred) => {
                probs.extend(pred.probs);
                targets.push(vocab.iter().position(|v| v == l).expect("checked above") as i64);
                items.push(p.clone());
            }
            Err(e) => {
                bad += 1;
                log::warn!("left out: {e:#}");
            }
        }
    }
    if items.is_empty() {
        bail!("none of the {} photos could be predicted", paths.len());
    }
    let n = items.len() as i64;
    let preds = preds_from_probs(Tensor::from_slice(&probs).view([n, vocab.len() as i64]), Tensor::from_slice(&targets));
    let interp = ClassificationInterpretation::new(&preds, vocab, items)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    plot_confusion_matrix(&interp, &args.out.join("confusion_matrix.png"), args.normalize)?;
    plot_top_losses(&interp, args.k, &args.out.join("top_losses.png"))?;
    let report = interp.classification_report();
    let most = interp.most_confused(args.min_val);
    let mut mc_csv = csv::Writer::from_writer(Vec::new());
    mc_csv.write_record(["actual", "predicted", "count"])?;
    for (a, p, c) in &most {
        mc_csv.write_record([a.as_str(), p.as_str(), &c.to_string()])?;
    }
    let mc_csv = mc_csv.into_inner().context("cannot assemble most_confused.csv")?;
    crate::util::atomic::write_atomic(&args.out.join("most_confused.csv"), &mc_csv)?;
    let top_rows = interp.top_losses_rows(args.k);
    let mut tl_csv = csv::Writer::from_writer(Vec::new());
    tl_csv.write_record(["file", "actual", "predicted", "loss", "prob"])?;
    for r in &top_rows {
        tl_csv.write_record(r)?;
    }
    let tl_csv = tl_csv.into_inner().context("cannot assemble top_losses.csv")?;
    crate::util::atomic::write_atomic(&args.out.join("top_losses.csv"), &tl_csv)?;
    crate::util::atomic::write_atomic(&args.out.join("classification_report.txt"), report.to_string().as_bytes())?;
    let mut md = format!(
        "# Interpretation of {}\n\n{} photos from {} ({} could not be read); accuracy {:.4}, error rate {:.4}.\n\n## Most confused (actual → predicted, count ≥ {})\n\n",
        args.model.display(),
        interp.len(),
        args.data.folder.as_ref().or(args.data.csv.as_ref()).map_or_else(String::new, |p| p.display().to_string()),
        bad,
        report.accuracy,
        1.0 - report.accuracy,
        args.min_val
    );
    for (a, p, c) in &most {
        let _ = writeln!(md, "- {a} → {p}: {c}");
    }
    let _ = write!(
        md,
        "\n## Classification report\n\n{}\n## Confusion matrix\n\n![confusion matrix](confusion_matrix.png)\n\n```\n{}```\n\n## Top losses\n\n![top losses](top_losses.png)\n\n| file | actual | predicted | loss | probability |\n|---|---|---|---:|---:|\n",
        report.to_markdown(),
        interp.confusion_matrix_table()
    );
    for r in &top_rows {
        let _ = writeln!(md, "| {} |", r.join(" | "));
    }
    crate::util::atomic::write_atomic(&args.out.join("report.md"), md.as_bytes())?;
    println!("{report}");
    println!("most confused (actual, predicted, count):");
    for (a, p, c) in most.iter().take(10) {
        println!("  {a:>28} → {p:<28} {c}");
    }
    println!("wrote confusion_matrix.png, top_losses.png, top_losses.csv, report.md, classification_report.txt, most_confused.csv to {}", args.out.display());
    Ok(())
}

/// `kestrel interpret` of a multi-label model: per-label precision, recall and support,
/// F1 (samples) and accuracy_multi at the model's threshold, written to
/// `multilabel_report.txt` and `report.md`.
///
/// Errors: no `--label-delim` (the cells cannot be split), labels outside the model's
/// vocabulary, no photo predicted, an output that cannot be written.
fn run_multi_label(args: &InterpretArgs, predictor: &Predictor, paths: &[PathBuf], cells: &[String], thresh: f64) -> crate::Result<()> {
    let Some(delim) = args.data.label_delim else {
        bail!("{} is a multi-label model (sigmoid outputs): give --label-delim as in training to read the label cells", args.model.display());
    };
    let vocab = predictor.vocab().to_vec();
    let c = vocab.len();
    let workers = args.data.workers.unwrap_or_else(crate::util::threads::default_workers);
    let results = predictor.predict_files(paths, args.data.bs, workers);
    let (mut probs, mut hot, mut n, mut bad) = (Vec::new(), Vec::new(), 0i64, 0);
    for ((p, cell), r) in paths.iter().zip(cells).zip(results) {
        let mut row = vec![0f32; c];
        for l in crate::data::label::multi_labels(cell, delim) {
            let i = vocab.iter().position(|v| *v == l)
                .with_context(|| format!("{}: label '{l}' is not in the model's vocabulary of {c} labels", p.display()))?;
            row[i] = 1.0;
        }
        match r {
            Ok(pred) => { probs.extend(pred.probs); hot.extend(row); n += 1; }
            Err(e) => { bad += 1; log::warn!("left out: {e:#}"); }
        }
    }
    if n == 0 {
        bail!("none of the {} photos could be predicted", paths.len());
    }
    let probs = Tensor::from_slice(&probs).view([n, c as i64]);
    let targets = Tensor::from_slice(&hot).view([n, c as i64]);
    let r = crate::interpret::MultiLabelReport::new(&probs, &targets, &vocab, thresh)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    crate::util::atomic::write_atomic(&args.out.join("multilabel_report.txt"), r.to_string().as_bytes())?;
    let source = predictor.meta().card.output.thresh_source.clone().unwrap_or_else(|| "the model file".into());
    let md = format!("# Interpretation of {} (multi-label)\n\n{} photos ({} could not be read); threshold {thresh} ({source}).\n\n{}",
                     args.model.display(), n, bad, r.to_markdown());
    crate::util::atomic::write_atomic(&args.out.join("report.md"), md.as_bytes())?;
    println!("{r}");
    println!("wrote multilabel_report.txt, report.md to {}", args.out.display());
    Ok(())
}
