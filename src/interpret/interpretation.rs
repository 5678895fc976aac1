//! fastai `ClassificationInterpretation`: confusion matrix, most confused pairs, top losses.

use super::preds::Preds;
use super::report::ClassificationReport;
use anyhow::bail;
use std::fmt::Write as _;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// A classifier's predictions on a labelled set, to look at its mistakes (fastai
/// `ClassificationInterpretation`). Plain Rust data: probabilities, decoded (argmax)
/// predictions, targets, losses, class names, and the photo of each item for plots.
#[derive(Debug, Clone)]
pub struct ClassificationInterpretation {
    probs: Vec<f32>,
    n_classes: usize,
    decoded: Vec<usize>,
    targets: Vec<usize>,
    losses: Vec<f32>,
    vocab: Vec<String>,
    items: Vec<PathBuf>,
}

/// One of [`ClassificationInterpretation::top_losses`]' items.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLoss {
    /// Item index (loader order).
    pub index: usize,
    /// Its loss.
    pub loss: f32,
    /// Predicted class index.
    pub predicted: usize,
    /// Actual class index.
    pub actual: usize,
    /// Probability of the predicted class (fastai shows this one).
    pub prob: f32,
}

impl ClassificationInterpretation {
    /// From [`Preds`] (e.g. [`super::get_preds`] on the validation loader), the class
    /// names, and the photo of each item in the same order (may be empty when no image
    /// plot is wanted).
    ///
    /// Errors: shapes that disagree (probabilities vs vocabulary, targets, losses, items),
    /// or a target outside the vocabulary.
    pub fn new(preds: &Preds, vocab: Vec<String>, items: Vec<PathBuf>) -> crate::Result<Self> {
        let s = preds.probs.size();
        if s.len() != 2 || s[1] as usize != vocab.len() {
            bail!("probabilities of shape {s:?} do not match a vocabulary of {} classes", vocab.len());
        }
        let n = s[0] as usize;
        let probs = Vec::<f32>::try_from(preds.probs.to_kind(Kind::Float).contiguous().flatten(0, -1))?;
        let targets: Vec<usize> = Vec::<i64>::try_from(preds.targets.to_kind(Kind::Int64).flatten(0, -1))?
            .into_iter()
            .map(|t| t as usize)
            .collect();
        let losses = Vec::<f32>::try_from(preds.losses.to_kind(Kind::Float).flatten(0, -1))?;
        if targets.len() != n || losses.len() != n || !(items.is_empty() || items.len() == n) {
            bail!("{n} predictions but {} targets, {} losses and {} items", targets.len(), losses.len(), items.len());
        }
        if let Some(t) = targets.iter().find(|&&t| t >= vocab.len()) {
            bail!("target {t} is outside the vocabulary of {} classes", vocab.len());
        }
        let c = vocab.len();
        let decoded = (0..n).map(|i| crate::export::argmax(&probs[i * c..(i + 1) * c])).collect();
        Ok(Self { probs, n_classes: c, decoded, targets, losses, vocab, items })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Class names.
    pub fn vocab(&self) -> &[String] {
        &self.vocab
    }

    /// The items' photos (empty when none were given).
    pub fn items(&self) -> &[PathBuf] {
        &self.items
    }

    /// Decoded predictions (argmax, first maximum on ties), per item.
    pub fn decoded(&self) -> &[usize] {
        &self.decoded
    }

    /// Targets, per item.
    pub fn targets(&self) -> &[usize] {
        &self.targets
    }

    /// Probabilities of item `i`, vocabulary order.
    pub fn probs(&self, i: usize) -> &[f32] {
        &self.probs[i * self.n_classes..(i + 1) * self.n_classes]
    }

    /// The confusion matrix (fastai `confusion_matrix`): `cm[actual][predicted]` = number
    /// of items of class `actual` predicted as `predicted`; C × C.
    pub fn confusion_matrix(&self) -> Vec<Vec<u64>> {
        let mut cm = vec![vec![0u64; self.n_classes]; self.n_classes];
        for (&t, &d) in self.targets.iter().zip(&self.decoded) {
            cm[t][d] += 1;
        }
        cm
    }

    /// The confusion matrix as a text table: one row per actual class, one column per
    /// predicted class (headed by class numbers, with a legend of names), row totals.
    pub fn confusion_matrix_table(&self) -> String {
        let cm = self.confusion_matrix();
        let name_w = self.vocab.iter().map(|v| v.chars().count()).max().unwrap_or(0).max(6);
        let cell_w = cm.iter().flatten().max().map_or(1, |m| m.to_string().len()).max(self.n_classes.to_string().len()) + 1;
        let mut s = String::new();
        let _ = write!(s, "{:>w$} predicted →\n{:>w$}", "", "actual ↓", w = name_w + 6);
        for j in 0..self.n_classes {
            let _ = write!(s, "{j:>cell_w$}");
        }
        let _ = writeln!(s, " {:>6}", "total");
        for (i, row) in cm.iter().enumerate() {
            let _ = write!(s, "{i:>4}  {:>name_w$}", self.vocab[i]);
            for v in row {
                let _ = write!(s, "{:>cell_w$}", if *v == 0 { ".".to_owned() } else { v.to_string() });
            }
            let _ = writeln!(s, " {:>6}", row.iter().sum::<u64>());
        }
        s
    }

    /// The off-diagonal cells of the confusion matrix with at least `min_val` items, as
    /// (actual, predicted, count), largest count first, ties in (actual, predicted) class
    /// order (fastai `most_confused(min_val=1)`).
    pub fn most_confused(&self, min_val: u64) -> Vec<(String, String, u64)> {
        let cm = self.confusion_matrix();
        let mut res: Vec<(usize, usize, u64)> = Vec::new();
        for (i, row) in cm.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if i != j && v >= min_val && v > 0 {
                    res.push((i, j, v));
                }
            }
        }
        res.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        res.into_iter().map(|(i, j, v)| (self.vocab[i].clone(), self.vocab[j].clone(), v)).collect()
    }

    /// The `k` items with the largest losses (smallest with `largest = false`), in that
    /// order; ties by item index (fastai `top_losses(k, largest)`).
    pub fn top_losses(&self, k: usize, largest: bool) -> Vec<TopLoss> {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.sort_by(|&a, &b| {
            let o = self.losses[a].total_cmp(&self.losses[b]);
            (if largest { o.reverse() } else { o }).then(a.cmp(&b))
        });
        idx.into_iter()
            .take(k)
            .map(|i| TopLoss {
                index: i,
                loss: self.losses[i],
                predicted: self.decoded[i],
                actual: self.targets[i],
                prob: self.probs(i)[self.decoded[i]],
            })
            .collect()
    }

    /// The items' names as shown beside them ([`distinct_names`]): the file name, with as
    /// many parent folders as it takes to tell apart files of the same name (Caltech-101's
    /// `accordion/image_0001.jpg` and `anchor/image_0001.jpg`).
    pub fn item_names(&self) -> Vec<String> {
        distinct_names(&self.items)
    }

    /// The `k` largest losses as table rows: file ([`Self::item_names`]), actual,
    /// predicted, loss, probability of the prediction (fastai `plot_top_losses`' captions).
    pub fn top_losses_rows(&self, k: usize) -> Vec<Vec<String>> {
        let names = self.item_names();
        self.top_losses(k, true).into_iter().map(|t| vec![
            names.get(t.index).cloned().unwrap_or_default(),
            self.vocab[t.actual].clone(),
            self.vocab[t.predicted].clone(),
            format!("{:.4}", t.loss),
            format!("{:.4}", t.prob),
        ]).collect()
    }

    /// Per-class precision, recall, F1 and support with accuracy and macro / weighted
    /// averages, over every class of the vocabulary (fastai
    /// `print_classification_report`, i.e. scikit-learn's `classification_report`).
    pub fn classification_report(&self) -> ClassificationReport {
        ClassificationReport::new(&self.confusion_matrix(), &self.vocab)
    }
}

/// [`Preds`] from probabilities (N, C) and targets (N) alone: losses are
/// `−ln p[target]` (probabilities clamped at 1e-30, so a loss is at most ≈ 69).
pub fn preds_from_probs(probs: Tensor, targets: Tensor) -> Preds {
    let p = probs.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1).clamp_min(1e-30);
    Preds { losses: -p.log(), probs, targets }
}

/// Short names that tell `paths` apart: for each path its last `d` components joined by
/// `/`, with the smallest `d` ≥ 1 that makes every path with the same file name distinct
/// (so most items show just their file name, and Caltech-101's repeated `image_0001.jpg`
/// shows as `accordion/image_0001.jpg`).
pub fn distinct_names(paths: &[std::path::PathBuf]) -> Vec<String> {
    use std::collections::HashMap;
    let comps: Vec<Vec<String>> =
        paths.iter().map(|p| p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect()).collect();
    let tail = |c: &Vec<String>, d: usize| c[c.len().saturating_sub(d)..].join("/");
    let mut depth = vec![1usize; paths.len()];
    loop {
        let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, c) in comps.iter().enumerate() {
            groups.entry(tail(c, depth[i])).or_default().push(i);
        }
        let mut changed = false;
        for g in groups.values().filter(|g| g.len() > 1) {
            for &i in g {
                if depth[i] < comps[i].len() {
                    depth[i] += 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    comps.iter().zip(&depth).map(|(c, &d)| tail(c, d)).collect()
}
