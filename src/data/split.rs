//! Splitters (fastai `RandomSplitter`, `GrandparentSplitter`, `ColSplitter`,
//! `FileSplitter`, and a stratified random splitter): items → (train, valid) indices.

use super::items::Items;
use crate::util::rng::{Rng, seeded};
use anyhow::{Context, bail};
use rand::Rng as _;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// How to divide the items into a training and a validation set.
#[derive(Debug, Clone)]
pub enum Splitter {
    /// A random `valid_pct` of the items (fastai `RandomSplitter(valid_pct=0.2, seed)`):
    /// a Fisher–Yates permutation from the seeded ChaCha generator, the first
    /// `floor(valid_pct * n)` go to validation. Same seed → same split on every platform.
    Random {
        /// Fraction in [0, 1) for validation.
        valid_pct: f64,
        /// Seed of the permutation.
        seed: u64,
    },
    /// Like `Random`, but within each class, so every class keeps its share in both sets
    /// (`round(valid_pct * n_class)` of each class to validation, at least one left in
    /// training).
    Stratified {
        /// Fraction in [0, 1) for validation.
        valid_pct: f64,
        /// Seed of the permutations.
        seed: u64,
    },
    /// By the grandparent folder's name (fastai `GrandparentSplitter(train_name='train',
    /// valid_name='valid')`); items under neither are left out.
    Grandparent {
        /// Folder name of the training set.
        train_name: String,
        /// Folder name of the validation set.
        valid_name: String,
    },
    /// By the first folder below `root` (fastai `GrandparentSplitter(train_name,
    /// valid_name)` for `root/<set>/<class>/<image>`, also when the photos are nested
    /// deeper inside the class folders); items under neither are left out (e.g. `test/`).
    TopFolder {
        /// The dataset folder.
        root: PathBuf,
        /// Folder name of the training set.
        train_name: String,
        /// Folder name of the validation set.
        valid_name: String,
    },
    /// By a boolean column of the items' CSV table (fastai `ColSplitter('is_valid')`):
    /// `true`/`false`, `1`/`0`, `yes`/`no` in any letter case.
    Col(String),
    /// Validation = the files listed in a text file, one per line (fastai `FileSplitter`).
    /// A line with folders (`accordion/image_0001.jpg`) matches the items whose path ends
    /// with those components, so files of the same name in different class folders are told
    /// apart; a bare name matches by file name.
    File(PathBuf),
}

/// Parses a CSV boolean cell. Errors: anything else than true/false/1/0/yes/no.
pub fn parse_bool(cell: &str) -> crate::Result<bool> {
    match cell.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "f" | "n" => Ok(false),
        other => bail!("'{other}' is not a boolean (use true/false or 1/0)"),
    }
}

/// A uniformly random permutation of `0..n` by Fisher–Yates, drawing from `rng` (the same
/// sequence on every platform).
pub fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i as u64) as usize;
        v.swap(i, j);
    }
    v
}

fn check_pct(valid_pct: f64) -> crate::Result<()> {
    if !(0.0..1.0).contains(&valid_pct) {
        bail!("valid_pct must be in [0, 1), got {valid_pct}");
    }
    Ok(())
}

impl Splitter {
    /// A one-line description for messages and `summary`.
    pub fn describe(&self) -> String {
        match self {
            Self::Random { valid_pct, seed } => format!("RandomSplitter(valid_pct={valid_pct}, seed={seed})"),
            Self::Stratified { valid_pct, seed } => format!("stratified RandomSplitter(valid_pct={valid_pct}, seed={seed})"),
            Self::Grandparent { train_name, valid_name } => format!("GrandparentSplitter('{train_name}', '{valid_name}')"),
            Self::TopFolder { train_name, valid_name, .. } => format!("GrandparentSplitter('{train_name}', '{valid_name}') (the first folder below the dataset folder)"),
            Self::Col(c) => format!("ColSplitter('{c}')"),
            Self::File(p) => format!("FileSplitter({})", p.display()),
        }
    }

    /// Returns (train indices, valid indices) into `items`. `labels` (one per item) is
    /// used by the stratified splitter. Train indices of the random splitters are in
    /// permutation order as fastai's; the others are ascending.
    ///
    /// Errors: bad `valid_pct`, a missing column or list file, a non-boolean cell.
    pub fn split(&self, items: &Items, labels: &[String]) -> crate::Result<(Vec<usize>, Vec<usize>)> {
        let n = items.len();
        match self {
            Self::Random { valid_pct, seed } => {
                check_pct(*valid_pct)?;
                let perm = permutation(n, &mut seeded(*seed));
                let cut = (valid_pct * n as f64) as usize;
                Ok((perm[cut..].to_vec(), perm[..cut].to_vec()))
            }
            Self::Stratified { valid_pct, seed } => {
                check_pct(*valid_pct)?;
                let mut rng = seeded(*seed);
                let mut by_class: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
                for (i, l) in labels.iter().enumerate() {
                    by_class.entry(l).or_default().push(i);
                }
                let (mut train, mut valid) = (Vec::new(), Vec::new());
                for idx in by_class.values() {
                    let perm = permutation(idx.len(), &mut rng);
                    let cut = ((valid_pct * idx.len() as f64).round() as usize).min(idx.len().saturating_sub(1));
                    valid.extend(perm[..cut].iter().map(|&p| idx[p]));
                    train.extend(perm[cut..].iter().map(|&p| idx[p]));
                }
                train.sort_unstable();
                valid.sort_unstable();
                Ok((train, valid))
            }
            Self::Grandparent { train_name, valid_name } => {
                let (mut train, mut valid) = (Vec::new(), Vec::new());
                for (i, p) in items.paths.iter().enumerate() {
                    let gp = p.parent().and_then(Path::parent).and_then(Path::file_name);
                    match gp.and_then(|g| g.to_str()) {
                        Some(g) if g == train_name => train.push(i),
                        Some(g) if g == valid_name => valid.push(i),
                        _ => {}
                    }
                }
                Ok((train, valid))
            }
            Self::TopFolder { root, train_name, valid_name } => {
                let (mut train, mut valid) = (Vec::new(), Vec::new());
                for (i, p) in items.paths.iter().enumerate() {
                    let top = p.strip_prefix(root).ok().and_then(|r| r.components().next()).map(|c| c.as_os_str().to_string_lossy());
                    match top.as_deref() {
                        Some(g) if g == train_name => train.push(i),
                        Some(g) if g == valid_name => valid.push(i),
                        _ => {}
                    }
                }
                Ok((train, valid))
            }
            Self::Col(col) => {
                let t = items.table("ColSplitter")?;
                let (mut train, mut valid) = (Vec::new(), Vec::new());
                for (i, cell) in t.column(col)?.into_iter().enumerate() {
                    let v = parse_bool(cell)
                        .with_context(|| format!("{}: column '{col}' at line {}", t.path.display(), i + 2))?;
                    if v { valid.push(i) } else { train.push(i) }
                }
                Ok((train, valid))
            }
            Self::File(list) => {
                let text = std::fs::read_to_string(list)
                    .with_context(|| format!("cannot read the validation list {}", list.display()))?;
                // Each listed entry as its path components; matched against the same number
                // of trailing components of every item path.
                let entries: HashSet<Vec<&str>> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| l.trim_start_matches("./").split(['/', '\\']).filter(|c| !c.is_empty()).collect())
                    .collect();
                let depths: std::collections::BTreeSet<usize> = entries.iter().map(Vec::len).collect();
                let (mut train, mut valid) = (Vec::new(), Vec::new());
                let mut matched: HashSet<String> = HashSet::new();
                for (i, p) in items.paths.iter().enumerate() {
                    let comps: Vec<String> = p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                    let hit = depths.iter().find(|&&d| {
                        d <= comps.len() && entries.contains(&comps[comps.len() - d..].iter().map(String::as_str).collect::<Vec<_>>())
                    });
                    match hit {
                        Some(&d) => { matched.insert(comps[comps.len() - d..].join("/")); valid.push(i) }
                        None => train.push(i),
                    }
                }
                // fastai's FileSplitter ignores them too; a typo in a folder prefix would
                // otherwise leave the validation set silently small.
                let mut missed: Vec<String> = entries.iter().map(|e| e.join("/")).filter(|e| !matched.contains(e)).collect();
                if !missed.is_empty() {
                    missed.sort();
                    log::warn!("{} of the {} lines of {} name no image of the dataset (first: {}); they are left out",
                               missed.len(), entries.len(), list.display(), missed[0]);
                }
                Ok((train, valid))
            }
        }
    }
}
