//! The `DataBlock` description (fastai `DataBlock(blocks=(ImageBlock, CategoryBlock),
//! get_items, get_y, splitter, item_tfms, batch_tfms)`) and what it builds.

use super::items::{CsvTable, Items};
use super::label::{Labeller, multi_labels};
use super::loader::{ImageDataLoader, LoaderConfig};
use super::resize::ItemTfm;
use super::split::Splitter;
use super::{BatchSource, CategoryMap, DataLoaders};
use crate::transforms::BatchTransform;
use crate::util::threads::default_workers;
use anyhow::bail;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tch::Device;

/// Where the items come from (fastai `get_items`).
#[derive(Debug, Clone)]
pub enum Source {
    /// `get_image_files(folder, recurse)`.
    Folder {
        /// Folder searched for images.
        path: PathBuf,
        /// Also search subfolders.
        recurse: bool,
    },
    /// `get_image_files` of some subfolders of one folder (e.g. `train/` and `valid/`
    /// but not `test/`), listed together, sorted.
    Subfolders {
        /// The dataset folder.
        root: PathBuf,
        /// The subfolders of `root` whose images are items.
        names: Vec<String>,
    },
    /// One item per row of a CSV file (fastai `ColReader(fn_col, pref, suffix)`).
    Csv {
        /// The CSV file.
        file: PathBuf,
        /// Column with the file names.
        fn_col: String,
        /// Folder prepended to the names (relative to the CSV's folder); `None` = the
        /// CSV's folder.
        pref: Option<PathBuf>,
        /// Text appended to the names (e.g. `.jpg`).
        suffix: String,
    },
}

/// A description of how to build `DataLoaders` from image files (fastai `DataBlock` with
/// `ImageBlock` and `CategoryBlock`). Build it with [`DataBlock::new`] and the
/// builder methods, then call [`DataBlock::dataloaders`].
#[derive(Clone)]
pub struct DataBlock {
    /// Where the items come from.
    pub source: Source,
    /// How each item gets its label (`get_y`).
    pub labeller: Labeller,
    /// How items are divided into training and validation.
    pub splitter: Splitter,
    /// Item transform on the CPU (presizing); the book's default `Resize(460)`.
    pub item_tfm: Option<ItemTfm>,
    /// Batch transforms on the device (augmentation, normalisation).
    pub batch_tfms: Option<Arc<dyn BatchTransform>>,
    /// Batch size (default 64).
    pub bs: usize,
    /// Seed of the shuffles and random transforms.
    pub seed: u64,
    /// Worker threads per loader (default: the number of CPUs).
    pub workers: usize,
    /// Batches prefetched ahead (default 2).
    pub prefetch: usize,
    /// Device of the batches.
    pub device: Device,
    /// Leave out undecodable files with a counted warning instead of failing.
    pub skip_bad: bool,
    /// Delimiter of multi-label cells (kept on [`Datasets::multi_labels`]).
    pub label_delim: Option<char>,
    /// Draw training items with weights inversely proportional to their class's
    /// frequency (fastai `weighted_dataloaders(wgts=1/class_count)`), so every class is
    /// seen about equally often per epoch.
    pub balance: bool,
}

impl std::fmt::Debug for DataBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataBlock")
            .field("source", &self.source)
            .field("labeller", &self.labeller)
            .field("splitter", &self.splitter)
            .field("item_tfm", &self.item_tfm)
            .field("batch_tfms", &self.batch_tfms.is_some())
            .field("bs", &self.bs)
            .field("seed", &self.seed)
            .finish()
    }
}

/// The labelled, split items (fastai `Datasets`), before any decoding.
#[derive(Debug, Clone)]
pub struct Datasets {
    /// All items.
    pub items: Items,
    /// One label per item.
    pub labels: Vec<String>,
    /// Multi-label parse of each label cell, when a `label_delim` was given.
    pub multi_labels: Option<Vec<Vec<String>>>,
    /// Indices of the training items.
    pub train: Vec<usize>,
    /// Indices of the validation items.
    pub valid: Vec<usize>,
    /// Vocabulary: the sorted labels of the training set (fastai `Categorize` learns it
    /// from the training split).
    pub vocab: CategoryMap,
    /// Problems worth knowing that do not stop training (e.g. classes with one photo).
    pub warnings: Vec<String>,
}

/// Both loaders with their concrete type, for what needs the items (show_batch's
/// `unique`, summary); [`ImageDataLoaders::dls`] gives the generic [`DataLoaders`].
#[derive(Clone)]
pub struct ImageDataLoaders {
    /// Training loader.
    pub train: Arc<ImageDataLoader>,
    /// Validation loader.
    pub valid: Arc<ImageDataLoader>,
    /// The datasets they load.
    pub datasets: Arc<Datasets>,
}

impl ImageDataLoaders {
    /// The generic `DataLoaders` a `Learner` takes.
    pub fn dls(&self) -> DataLoaders {
        DataLoaders { train: self.train.clone(), valid: self.valid.clone(), vocab: self.datasets.vocab.clone() }
    }
}

impl DataBlock {
    /// A block with fastai's defaults: `RandomSplitter(0.2, seed 42)`, `Resize(460)`
    /// (the book's presizing), bs 64, no batch transforms, CPU.
    pub fn new(source: Source, labeller: Labeller) -> Self {
        Self {
            source,
            labeller,
            splitter: Splitter::Random { valid_pct: 0.2, seed: 42 },
            item_tfm: Some(ItemTfm::resize(460)),
            batch_tfms: None,
            bs: 64,
            seed: 42,
            workers: default_workers(),
            prefetch: 2,
            device: Device::Cpu,
            skip_bad: false,
            label_delim: None,
            balance: false,
        }
    }

    /// Sets the delimiter of multi-label cells: `Some(' ')` makes a multi-label block
    /// (fastai `MultiCategoryBlock` with `ColReader(label_delim=' ')`).
    pub fn label_delim(mut self, d: Option<char>) -> Self {
        self.label_delim = d;
        self
    }

    /// Sets `balance` (class-balanced sampling of the training items).
    pub fn balance(mut self, v: bool) -> Self {
        self.balance = v;
        self
    }

    /// Sets the splitter.
    pub fn splitter(mut self, s: Splitter) -> Self {
        self.splitter = s;
        self
    }

    /// Sets the item transform (`None`: images must already share one size).
    pub fn item_tfm(mut self, t: Option<ItemTfm>) -> Self {
        self.item_tfm = t;
        self
    }

    /// Sets the batch transforms.
    pub fn batch_tfms(mut self, t: Option<Arc<dyn BatchTransform>>) -> Self {
        self.batch_tfms = t;
        self
    }

    /// Sets the batch size.
    pub fn bs(mut self, bs: usize) -> Self {
        self.bs = bs;
        self
    }

    /// Sets the seed of shuffles and random transforms.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the number of worker threads.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Sets the device.
    pub fn device(mut self, d: Device) -> Self {
        self.device = d;
        self
    }

    /// Sets `skip_bad`.
    pub fn skip_bad(mut self, v: bool) -> Self {
        self.skip_bad = v;
        self
    }

    /// Lists the items (fastai `get_items`). Errors: missing folder or CSV, bad column.
    pub fn items(&self) -> crate::Result<Items> {
        match &self.source {
            Source::Folder { path, recurse } => Items::from_folder(path, *recurse),
            Source::Subfolders { root, names } => {
                let mut items = Items { paths: Vec::new(), table: None, n_ignored: 0, ignored: Vec::new() };
                for n in names {
                    let f = Items::from_folder(&root.join(n), true)?;
                    items.paths.extend(f.paths);
                    items.n_ignored += f.n_ignored;
                    items.ignored.extend(f.ignored);
                }
                items.paths.sort();
                Ok(items)
            }
            Source::Csv { file, fn_col, pref, suffix } => Items::from_csv(CsvTable::read(file)?, fn_col, pref.as_deref(), suffix),
        }
    }

    /// Lists, labels and splits the items and checks the split (fastai
    /// `DataBlock.datasets`). Warnings (also logged): classes with a single photo, ignored
    /// non-image files.
    ///
    /// Errors: no items; a labeller failing on some items (how many, first names); an
    /// empty training or validation set; labels that occur only in validation (named);
    /// fewer than 2 classes in a single-label training set (naming the labeller).
    pub fn datasets(&self) -> crate::Result<Datasets> {
        let items = self.items()?;
        if items.is_empty() {
            bail!("no images found in {}", self.source_name());
        }
        let labels = self.labeller.label_all(&items)?;
        let multi: Option<Vec<Vec<String>>> = self.label_delim.map(|d| labels.iter().map(|l| multi_labels(l, d)).collect());
        let (train, valid) = self.splitter.split(&items, &labels)?;
        let mut warnings = match &multi {
            Some(m) => check_split_sets(m, &train, &valid, &self.splitter)?,
            None => check_split(&labels, &train, &valid, &self.splitter)?,
        };
        if items.n_ignored > 0 {
            let shown: Vec<String> = items.ignored.iter().take(3).map(|p| p.display().to_string()).collect();
            let more = if items.n_ignored > shown.len() { ", …" } else { "" };
            warnings.insert(0, format!("{} files in {} are not images and were ignored: {}{more}",
                                       items.n_ignored, self.source_name(), shown.join(", ")));
        }
        for w in &warnings {
            log::warn!("{w}");
        }
        let vocab = match &multi {
            // fastai `MultiCategorize.setups`: every label of the training items.
            Some(m) => CategoryMap::new(train.iter().flat_map(|&i| m[i].iter())),
            None => CategoryMap::new(train.iter().map(|&i| &labels[i])),
        };
        if multi.is_none() && vocab.len() < 2 {
            let only = vocab.items().first().map_or(String::new(), |c| format!(" ('{c}')"));
            let hint = match &self.labeller {
                Labeller::NameRegex(_) => " Photos in class folders are labelled by folder without --label-re (or with --label-from parent).",
                Labeller::ClassFolder { .. } | Labeller::Parent => " Give the folder that holds the class folders.",
                _ => "",
            };
            bail!(
                "only {} class{only} among the {} training images of {} (labels from {}): a classifier needs at least 2.{hint}",
                vocab.len(), train.len(), self.source_name(), self.labeller.describe()
            );
        }
        Ok(Datasets { items, labels, multi_labels: multi, train, valid, vocab, warnings })
    }

    fn source_name(&self) -> String {
        match &self.source {
            Source::Folder { path, .. } => path.display().to_string(),
            Source::Subfolders { root, names } => format!("{} ({})", root.display(), names.join("/, ") + "/"),
            Source::Csv { file, .. } => file.display().to_string(),
        }
    }

    /// The loader settings for the training (`train = true`) or validation set.
    pub fn loader_config(&self, train: bool) -> LoaderConfig {
        LoaderConfig {
            bs: self.bs,
            shuffle: train,
            drop_last: train,
            seed: if train { self.seed } else { self.seed ^ 0x7A11_D000 },
            workers: self.workers,
            prefetch: self.prefetch,
            device: self.device,
            train,
            skip_bad: self.skip_bad,
            weights: None,
        }
    }

    /// Builds both loaders with their item-level datasets. Errors: as [`Self::datasets`], and
    /// fewer training images than the batch size (nothing to train on with drop_last).
    pub fn image_dataloaders(&self) -> crate::Result<ImageDataLoaders> {
        let ds = Arc::new(self.datasets()?);
        let make = |idx: &[usize], train: bool| -> crate::Result<Arc<ImageDataLoader>> {
            let paths = idx.iter().map(|&i| ds.items.paths[i].clone()).collect();
            let targets = match &ds.multi_labels {
                Some(_) => vec![0; idx.len()],
                None => idx.iter().map(|&i| ds.vocab.index(&ds.labels[i]).map(|t| t as i64)).collect::<crate::Result<_>>()?,
            };
            let mut cfg = self.loader_config(train);
            if train && self.balance {
                cfg.weights = Some(Arc::new(class_balance_weights(&idx.iter().map(|&i| ds.labels[i].as_str()).collect::<Vec<_>>())));
            }
            let dl = ImageDataLoader::new(paths, targets, self.item_tfm.clone(), self.batch_tfms.clone(), cfg)?;
            Ok(Arc::new(match &ds.multi_labels {
                Some(m) => {
                    let lists = idx.iter().map(|&i| m[i].iter().map(|l| ds.vocab.index(l).map(|t| t as i64)).collect())
                        .collect::<crate::Result<_>>()?;
                    dl.multi_label(ds.vocab.len(), lists)?
                }
                None => dl,
            }))
        };
        let (train, valid) = (make(&ds.train, true)?, make(&ds.valid, false)?);
        if train.n_batches() == 0 {
            bail!(
                "the training set has {} images, fewer than the batch size {}: the training loader drops the last \
                 incomplete batch (as fastai's), so there is nothing to train on; lower the batch size (--bs)",
                ds.train.len(),
                train.config().bs
            );
        }
        Ok(ImageDataLoaders { train, valid, datasets: ds })
    }

    /// Builds the `DataLoaders` (fastai `DataBlock.dataloaders`). Errors: as
    /// [`Self::datasets`].
    pub fn dataloaders(&self) -> crate::Result<DataLoaders> {
        Ok(self.image_dataloaders()?.dls())
    }
}

/// Sampling weights for class-balanced training (fastai `weighted_dataloaders` with
/// `wgts = 1 / count(class)`): item `i` gets `1 / (number of items with labels[i])`, so
/// each class has the same total weight.
pub fn class_balance_weights(labels: &[&str]) -> Vec<f64> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in labels {
        *counts.entry(l).or_default() += 1;
    }
    labels.iter().map(|l| 1.0 / counts[l] as f64).collect()
}

/// The checks run before any training: an empty training or validation set and labels
/// found only in validation are errors naming the classes; classes with a single photo
/// are returned as warnings.
pub fn check_split(labels: &[String], train: &[usize], valid: &[usize], splitter: &Splitter) -> crate::Result<Vec<String>> {
    let sets: Vec<Vec<String>> = labels.iter().map(|l| vec![l.clone()]).collect();
    check_split_sets(&sets, train, valid, splitter)
}

/// [`check_split`] for items with several labels each (multi-label): a label is
/// counted for every item that carries it.
pub fn check_split_sets(labels: &[Vec<String>], train: &[usize], valid: &[usize], splitter: &Splitter) -> crate::Result<Vec<String>> {
    if train.is_empty() {
        bail!("the training set is empty after {} ({} items, {} in validation)", splitter.describe(), labels.len(), valid.len());
    }
    if valid.is_empty() {
        bail!("the validation set is empty after {} ({} items): nothing to measure the model on", splitter.describe(), labels.len());
    }
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for &i in train {
        for l in &labels[i] { counts.entry(l).or_default().0 += 1; }
    }
    for &i in valid {
        for l in &labels[i] { counts.entry(l).or_default().1 += 1; }
    }
    let only_valid: Vec<&str> = counts.iter().filter(|(_, c)| c.0 == 0).map(|(k, _)| *k).collect();
    if !only_valid.is_empty() {
        bail!(
            "{} label(s) occur only in the validation set, so the model can never learn them: {}",
            only_valid.len(),
            only_valid.join(", ")
        );
    }
    let single: Vec<&str> = counts.iter().filter(|(_, c)| c.0 + c.1 == 1).map(|(k, _)| *k).collect();
    let mut warnings = Vec::new();
    if !single.is_empty() {
        warnings.push(format!("{} class(es) have a single photo: {}", single.len(), single.join(", ")));
    }
    Ok(warnings)
}
