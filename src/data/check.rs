//! A dataset's health report before training (`kestrel check-data`): what would make a
//! fastai `DataBlock` fail, or train on something other than intended.

use super::decode::decode_bytes;
use super::DataBlock;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;

/// What [`check_data`] found. Paths are as the items list them.
#[derive(Debug, Clone, Default)]
pub struct DataCheck {
    /// Number of items listed (images in the folder, or rows of the CSV).
    pub n_items: usize,
    /// Items in the training and validation sets.
    pub n_split: (usize, usize),
    /// Per label: (label, training items, validation items), labels sorted; a multi-label
    /// item counts once for each of its labels.
    pub counts: Vec<(String, usize, usize)>,
    /// Files that cannot be read or decoded, with the reason.
    pub undecodable: Vec<(PathBuf, String)>,
    /// Items the labeller gives no label, with the reason (e.g. a regex miss).
    pub label_misses: Vec<(PathBuf, String)>,
    /// Labels that occur in the validation set but never in training (the model cannot
    /// predict them; fastai fails on them).
    pub valid_only: Vec<String>,
    /// Groups of files with identical content (SHA-256), each group sorted; one of each
    /// group is a candidate for removal (a copy in both splits inflates validation scores).
    pub duplicates: Vec<Vec<PathBuf>>,
    /// Duplicate groups whose copies carry different labels, as "file (label)" per copy:
    /// the same photo taught as two classes (a problem).
    pub conflicting_labels: Vec<Vec<String>>,
    /// Duplicate groups with copies in both training and validation: the model is scored on
    /// photos it trained on (a warning on top of the duplicate).
    pub leaks: Vec<Vec<PathBuf>>,
    /// Images whose smaller side is below the training size: (file, width, height) in pixels.
    pub tiny: Vec<(PathBuf, u32, u32)>,
    /// The training size the images were compared with, pixels.
    pub min_size: u32,
    /// Sets that would leave nothing to train on or to measure: "no items", "the
    /// training set is empty", "the validation set is empty", fewer than 2 classes in a
    /// single-label training set.
    pub empty: Vec<String>,
    /// Files in the folder that are not images (by extension) and were left out, sorted.
    pub ignored: Vec<PathBuf>,
}

/// Largest-to-smallest class ratio above which [`DataCheck`] warns (fastai has no such
/// check; 10× is where a plain loader starts to starve the small classes).
pub const IMBALANCE_WARN: f64 = 10.0;

impl DataCheck {
    /// Number of problems that stop or spoil training: undecodable files, labeller misses,
    /// labels only in validation, empty sets, one photo under different labels (each file,
    /// label or group counted once).
    pub fn n_problems(&self) -> usize {
        self.undecodable.len() + self.label_misses.len() + self.valid_only.len() + self.empty.len() + self.conflicting_labels.len()
    }

    /// Number of warnings, worth a look but not wrong in themselves: tiny images (they are
    /// upsampled; common in real photo collections), duplicate copies (a duplicate group
    /// counts its extra copies) and duplicate groups across training and validation.
    pub fn n_warnings(&self) -> usize {
        let imbalanced = self.imbalance().is_some_and(|(_, _, r)| r > IMBALANCE_WARN);
        self.tiny.len() + self.duplicates.iter().map(|g| g.len() - 1).sum::<usize>() + self.leaks.len() + self.ignored.len()
            + usize::from(imbalanced)
    }

    /// The largest and smallest class by photos (training + validation) and their ratio
    /// (≥ 1): `(largest, smallest, ratio)` as (label, count) pairs; `None` with fewer
    /// than two classes.
    pub fn imbalance(&self) -> Option<((String, usize), (String, usize), f64)> {
        if self.counts.len() < 2 {
            return None;
        }
        let total = |c: &(String, usize, usize)| (c.0.clone(), c.1 + c.2);
        let max = self.counts.iter().map(total).max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
        let min = self.counts.iter().map(total).min_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)))?;
        let ratio = max.1 as f64 / min.1.max(1) as f64;
        Some((max, min, ratio))
    }
}

/// Checks the items of `block` (its source, labeller and splitter; transforms are not
/// used): every file is read and decoded (in `block.workers` threads), hashed and measured
/// against `min_size` (the `--size` the model trains at, pixels).
///
/// Errors: the items cannot be listed (missing folder or CSV, bad column) or the splitter
/// fails (e.g. a non-boolean `is_valid` cell). Problems in the data are not errors: they
/// are in the returned [`DataCheck`].
pub fn check_data(block: &DataBlock, min_size: u32) -> crate::Result<DataCheck> {
    let items = block.items()?;
    let n = items.len();
    let mut labels = Vec::with_capacity(n);
    let mut label_misses = Vec::new();
    for i in 0..n {
        match block.labeller.label(&items, i) {
            Ok(l) => labels.push(Some(l)),
            Err(e) => { label_misses.push((items.paths[i].clone(), format!("{e:#}"))); labels.push(None) }
        }
    }
    let placeholder: Vec<String> = labels.iter().map(|l| l.clone().unwrap_or_default()).collect();
    let (train, valid) = block.splitter.split(&items, &placeholder)?;

    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    // Multi-label cells count each of their labels (fastai `MultiCategorize`).
    let split = |l: &String| match block.label_delim {
        Some(d) => super::label::multi_labels(l, d),
        None => vec![l.clone()],
    };
    for &i in &train { for l in labels[i].iter().flat_map(split) { counts.entry(l).or_default().0 += 1; } }
    for &i in &valid { for l in labels[i].iter().flat_map(split) { counts.entry(l).or_default().1 += 1; } }
    let valid_only = counts.iter().filter(|(_, c)| c.0 == 0 && c.1 > 0).map(|(l, _)| l.clone()).collect();

    let files = scan_files(&items.paths, block.workers.max(1));
    let mut undecodable = Vec::new();
    let mut tiny = Vec::new();
    // Every row counts: the same file listed twice (in training and in validation, say)
    // is a duplicate too.
    let mut by_hash: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
    for (i, (path, f)) in items.paths.iter().zip(files).enumerate() {
        match f {
            Err(e) => undecodable.push((path.clone(), e)),
            Ok(s) => {
                by_hash.entry(s.hash).or_default().push(i);
                if s.width.min(s.height) < min_size { tiny.push((path.clone(), s.width, s.height)); }
            }
        }
    }
    let mut groups: Vec<Vec<usize>> = by_hash.into_values().filter(|g| g.len() > 1).collect();
    groups.sort_by_key(|g| g.iter().map(|&i| &items.paths[i]).min().cloned());
    let paths_of = |g: &[usize]| -> Vec<PathBuf> { let mut v: Vec<PathBuf> = g.iter().map(|&i| items.paths[i].clone()).collect(); v.sort(); v };
    let duplicates: Vec<Vec<PathBuf>> = groups.iter().map(|g| paths_of(g)).collect();
    let conflicting_labels = groups.iter()
        .filter(|g| g.iter().filter_map(|&i| labels[i].as_ref()).collect::<BTreeSet<_>>().len() > 1)
        .map(|g| g.iter().map(|&i| format!("{} ({})", items.paths[i].display(), labels[i].as_deref().unwrap_or("no label"))).collect())
        .collect();
    let (in_train, in_valid): (BTreeSet<usize>, BTreeSet<usize>) = (train.iter().copied().collect(), valid.iter().copied().collect());
    let leaks = groups.iter()
        .filter(|g| g.iter().any(|i| in_train.contains(i)) && g.iter().any(|i| in_valid.contains(i)))
        .map(|g| paths_of(g))
        .collect();
    let mut empty: Vec<String> = [(n == 0, "no items"), (n > 0 && train.is_empty(), "the training set is empty"),
                 (n > 0 && valid.is_empty(), "the validation set is empty")]
        .iter().filter(|(b, _)| *b).map(|(_, m)| m.to_string()).collect();
    let trained: Vec<&String> = counts.iter().filter(|(_, c)| c.0 > 0).map(|(l, _)| l).collect();
    if block.label_delim.is_none() && !train.is_empty() && trained.len() < 2 {
        // fine-tune refuses it (DataBlock::datasets): say so here first.
        let only = trained.first().map_or(String::new(), |l| format!(" ('{l}')"));
        empty.push(format!("only {} class{only} in the training set: a classifier needs at least 2", trained.len()));
    }
    Ok(DataCheck {
        n_items: n,
        n_split: (train.len(), valid.len()),
        counts: counts.into_iter().map(|(l, (t, v))| (l, t, v)).collect(),
        undecodable, label_misses, valid_only, duplicates, conflicting_labels, leaks, tiny, min_size, empty, ignored: items.ignored,
    })
}

struct Scan {
    hash: [u8; 32],
    width: u32,
    height: u32,
}

/// Reads, hashes and decodes every file, `workers` threads, results in input order.
fn scan_files(paths: &[PathBuf], workers: usize) -> Vec<Result<Scan, String>> {
    let chunk = paths.len().div_ceil(workers).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = paths.chunks(chunk).map(|c| s.spawn(move || c.iter().map(|p| scan(p)).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

fn scan(path: &std::path::Path) -> Result<Scan, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    let (img, _) = decode_bytes(&bytes).map_err(|e| format!("{e:#}"))?;
    Ok(Scan { hash, width: img.width(), height: img.height() })
}

impl fmt::Display for DataCheck {
    /// The report as `kestrel check-data` prints it: counts, then one block per kind of
    /// problem or warning (at most 20 lines each), then a one-line verdict.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, v) = self.n_split;
        writeln!(f, "{} items, {} labels; {t} training, {v} validation", self.n_items, self.counts.len())?;
        writeln!(f, "{:<32} {:>6} {:>6}", "label", "train", "valid")?;
        for (l, t, v) in &self.counts { writeln!(f, "{l:<32} {t:>6} {v:>6}")?; }
        if let Some(((big, nb), (small, ns), r)) = self.imbalance() {
            if nb == ns {
                writeln!(f, "every class has {nb}: balanced")?;
            } else {
                writeln!(f, "largest class {big} ({nb}), smallest {small} ({ns}): ratio {r:.1}×")?;
            }
            if r > IMBALANCE_WARN {
                writeln!(f, "warning: classes are imbalanced (more than {IMBALANCE_WARN}×): consider `fine-tune --balance` \
                             (fastai weighted_dataloaders) and read the per-class recall in the report")?;
            }
        }
        let list = |f: &mut fmt::Formatter<'_>, title: String, lines: Vec<String>| -> fmt::Result {
            if lines.is_empty() { return Ok(()); }
            writeln!(f, "\n{title} ({}):", lines.len())?;
            for l in lines.iter().take(20) { writeln!(f, "  {l}")?; }
            if lines.len() > 20 { writeln!(f, "  … and {} more", lines.len() - 20)?; }
            Ok(())
        };
        list(f, "nothing to train or to measure".into(), self.empty.clone())?;
        list(f, "undecodable files".into(), self.undecodable.iter().map(|(p, e)| format!("{}: {e}", p.display())).collect())?;
        list(f, "warning: not images, left out".into(), self.ignored.iter().map(|p| p.display().to_string()).collect())?;
        list(f, "labeller misses".into(), self.label_misses.iter().map(|(p, e)| format!("{}: {e}", p.display())).collect())?;
        list(f, "labels only in the validation set".into(), self.valid_only.clone())?;
        list(f, "warning: duplicates (same content)".into(), self.duplicates.iter()
            .map(|g| {
                let listed_again = g.windows(2).any(|w| w[0] == w[1]);
                let paths = g.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" = ");
                if listed_again { format!("{paths} (a file listed more than once)") } else { paths }
            }).collect())?;
        list(f, "one photo under different labels".into(), self.conflicting_labels.iter().map(|g| g.join(" = ")).collect())?;
        list(f, "warning: the same photo in training and in validation (it is scored on what it trained on)".into(),
             self.leaks.iter().map(|g| g.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" = ")).collect())?;
        list(f, format!("warning: tiny images (smaller than {} px; upsampled by the presize)", self.min_size),
             self.tiny.iter().map(|(p, w, h)| format!("{}: {w}×{h}", p.display())).collect())?;
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let warnings = match self.n_warnings() { 0 => String::new(), w => format!(", {w} warning{}", plural(w)) };
        match self.n_problems() {
            0 => writeln!(f, "\nno problems found{warnings}"),
            n => writeln!(f, "\n{n} problem{} found{warnings}", plural(n)),
        }
    }
}
