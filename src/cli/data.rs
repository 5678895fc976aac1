//! `kestrel data summary | show-batch`: look at a dataset as a `DataBlock` sees it.

use crate::data::show::{Denorm, show_loader_batch};
use crate::data::summary::summary;
use crate::data::layout::{FolderLayout, detect_layout};
use crate::data::{DataBlock, ItemTfm, Labeller, PETS_PATTERN, Source, Splitter};
use super::aug::AugOpts;
use crate::transforms::{BatchTfms, Normalize};
use crate::util::device::parse_device;
use crate::util::threads::default_workers;
use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;

/// Where labels come from (fastai `get_y`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LabelFrom {
    /// `RegexLabeller(--label-re)` on the file name (`using_attr(..., 'name')`).
    NameRe,
    /// `parent_label`: the name of the folder that holds the image.
    Parent,
    /// `ColReader(--label-col)` on the rows of `--csv`.
    Csv,
}

/// The data options shared by every subcommand that builds `DataLoaders` (data,
/// fine-tune, check-data): they describe one `DataBlock`.
#[derive(Args, Debug, Clone)]
pub struct DataOpts {
    /// Folder of the images, searched recursively (fastai `get_image_files(path)`). With
    /// --csv, the folder the file names of --fn-col are relative to (default: the CSV's folder).
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,
    /// Where labels come from: name-re (regex on the file name), parent (folder name),
    /// csv (a column of --csv). Default: csv when --csv is given; name-re when --label-re
    /// is given; the class folder when --folder is laid out in class folders
    /// (`DIR/<class>/…` or `DIR/train/<class>/…` + `DIR/valid/<class>/…`); else name-re.
    #[arg(long, value_enum, value_name = "HOW")]
    pub label_from: Option<LabelFrom>,
    /// Regular expression applied to the file name; its first group is the label
    /// (fastai `RegexLabeller`). Default: the book's pet-breed pattern. Giving it labels
    /// by file name; it is refused with --csv or --label-from csv/parent, whose labels
    /// come from elsewhere.
    #[arg(long, value_name = "REGEX")]
    pub label_re: Option<String>,
    /// CSV file with one row per image (fastai `ImageDataLoaders.from_csv` / `ColReader`).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// CSV column holding the image file names.
    #[arg(long, value_name = "COL", default_value = "fname")]
    pub fn_col: String,
    /// CSV column holding the labels.
    #[arg(long, value_name = "COL", default_value = "label")]
    pub label_col: String,
    /// Multi-label data: the --label-col cells hold several labels separated by this one
    /// character (fastai `ColReader(label_col, label_delim=' ')` → `MultiCategoryBlock`):
    /// one-hot targets, `BCEWithLogitsLossFlat`, `accuracy_multi` and F1 (samples).
    #[arg(long, value_name = "CHAR", value_parser = parse_delim)]
    pub label_delim: Option<char>,
    /// CSV column of booleans: true puts the row in the validation set (fastai
    /// `ColSplitter`). Without it the split is random (--valid-pct, --seed).
    #[arg(long, value_name = "COL")]
    pub valid_col: Option<String>,
    /// Name of the training folder of a `DIR/train/<class>/…` + `DIR/valid/<class>/…`
    /// layout (fastai `from_folder(train='train')`); that layout is recognised without it.
    #[arg(long, value_name = "NAME")]
    pub train: Option<String>,
    /// Name of the validation folder beside the training folder (default: `valid`, else `val`).
    #[arg(long, value_name = "NAME")]
    pub valid: Option<String>,
    /// Name of the test folder beside the training folder: kept out of training and
    /// validation; `kestrel interpret --on-test` and `kestrel predict` read it.
    #[arg(long, value_name = "NAME", default_value = "test")]
    pub test: String,
    /// Text file listing the validation images, one per line, as names or paths relative
    /// to the dataset folder (fastai `FileSplitter`); the other items train.
    #[arg(long, value_name = "FILE", conflicts_with = "valid_col")]
    pub valid_list: Option<PathBuf>,
    /// Fraction of the items held out for validation by `RandomSplitter` (not with
    /// --valid-col or --valid-list, which split otherwise).
    #[arg(long, value_name = "PCT", default_value_t = 0.2, conflicts_with_all = ["valid_col", "valid_list"])]
    pub valid_pct: f64,
    /// Random seed of the split, the shuffles and the random transforms: the same seed
    /// gives the same split and batches.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Presizing: every image is first resized with `Resize(presize)` (crop the largest
    /// square: random on training, centred on validation) on the CPU workers. At most 2048
    /// (`kestrel_image::resize::MAX_PRESIZE`: it bounds the memory of every batch).
    #[arg(long, value_name = "PX", default_value_t = 460, value_parser = clap::value_parser!(u32).range(1..=kestrel_image::resize::MAX_PRESIZE as i64))]
    pub presize: u32,
    /// Batch size: the number of images in each batch (the book's pets recipe and kestrel's
    /// default 32; fastai's `bs` default is 64).
    #[arg(long, default_value_t = 32, value_parser = parse_bs)]
    pub bs: usize,
    /// Worker threads decoding and resizing images (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Device of the batches (and of training): cpu, cuda, cuda:N or auto (CUDA when libtorch
    /// sees a GPU, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Leave out files that cannot be decoded, with a warning for each, instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Class-balanced training batches: draw training items with weights inversely
    /// proportional to their class's frequency (fastai `weighted_dataloaders`), with
    /// replacement, the same number per epoch. For imbalanced folders (check-data warns
    /// above a 10× ratio).
    #[arg(long)]
    pub balance: bool,
}

impl DataOpts {
    /// Training needs `--bs` of at least 2: BatchNorm normalises each batch by its own
    /// variance, which one image does not have (PyTorch refuses it: "Expected more than 1
    /// value per channel when training"; kestrel's runs then gave NaN validation losses).
    ///
    /// Errors: `--bs 1`, naming the reason.
    pub fn check_training_bs(&self) -> crate::Result<()> {
        if self.bs < 2 {
            bail!("--bs {}: training needs at least 2 images per batch (BatchNorm normalises each batch by its variance; \
                   one image has none)", self.bs);
        }
        Ok(())
    }

    /// The file-name pattern: --label-re, else the book's pet-breed pattern.
    pub fn label_re(&self) -> &str { self.label_re.as_deref().unwrap_or(PETS_PATTERN) }

    /// Where the labels come from as asked: --label-from, else `csv` with --csv, else
    /// `name-re` when --label-re is given; `None` leaves it to the folder's layout.
    pub fn label_from(&self) -> Option<LabelFrom> {
        self.label_from
            .or(self.csv.is_some().then_some(LabelFrom::Csv))
            .or(self.label_re.is_some().then_some(LabelFrom::NameRe))
    }

    /// How `--folder` is organised (without --csv): train/valid folders, class folders,
    /// or flat. `None` with --csv.
    ///
    /// Errors: as [`detect_layout`] (a missing --train/--valid folder, an empty class
    /// folder, a class only in the validation or test folder), naming the folder.
    pub fn layout(&self) -> crate::Result<Option<FolderLayout>> {
        match (&self.csv, &self.folder) {
            (None, Some(f)) => {
                let root = std::env::current_dir()?.join(f);
                let split = self.train.is_some() || self.valid.is_some() || root.join("train").is_dir();
                if self.label_from().is_some() && !split {
                    // Labels from the names or parents as asked: no class folders to check.
                    return Ok(Some(FolderLayout::Flat { root }));
                }
                Ok(Some(detect_layout(&root, self.train.as_deref(), self.valid.as_deref(), Some(&self.test))?))
            }
            (Some(_), _) if self.train.is_some() || self.valid.is_some() => {
                bail!("--train/--valid name folders of --folder DIR; with --csv use --valid-col or --valid-list")
            }
            _ => Ok(None),
        }
    }

    /// The labelled photos of the test folder of a `train/ valid/ test/` layout (paths and
    /// labels, sorted by path), for `interpret --on-test`.
    ///
    /// Errors: --folder is not laid out with a test folder (says what it is); a photo
    /// outside a class folder; a layout problem.
    pub fn test_set(&self) -> crate::Result<(Vec<PathBuf>, Vec<String>)> {
        let Some(FolderLayout::Split { root, test: Some(test), .. }) = self.layout()? else {
            bail!("--on-test needs --folder DIR with train/, valid/ (or val/) and {}/ class folders", self.test);
        };
        let items = Source::Subfolders { root: root.clone(), names: vec![test] };
        let block = DataBlock::new(items, Labeller::ClassFolder { root, depth: 1 });
        let items = block.items()?;
        let labels = block.labeller.label_all(&items)?;
        Ok((items.paths, labels))
    }

    /// The `DataBlock` these options describe (no batch transforms; callers add theirs).
    ///
    /// Errors: neither --folder nor --csv, --label-from csv without --csv, an invalid
    /// regex, an unknown device, a folder layout problem ([`Self::layout`]).
    pub fn to_datablock(&self) -> crate::Result<DataBlock> {
        let cwd = std::env::current_dir()?;
        let folder = self.folder.as_ref().map(|f| cwd.join(f));
        let layout = self.layout()?;
        let source = match (&self.csv, &folder, &layout) {
            (Some(csv), _, _) => Source::Csv { file: cwd.join(csv), fn_col: self.fn_col.clone(), pref: folder.clone(), suffix: String::new() },
            (None, _, Some(FolderLayout::Split { root, train, valid, .. })) => {
                Source::Subfolders { root: root.clone(), names: vec![train.clone(), valid.clone()] }
            }
            (None, Some(f), _) => Source::Folder { path: f.clone(), recurse: true },
            (None, None, _) => bail!("say where the images are: --folder DIR, or --csv FILE"),
        };
        let class_folder = match &layout {
            Some(FolderLayout::Split { root, .. }) => Some(Labeller::ClassFolder { root: root.clone(), depth: 1 }),
            Some(FolderLayout::Classes { root, .. }) => Some(Labeller::ClassFolder { root: root.clone(), depth: 0 }),
            _ => None,
        };
        let from = self.label_from();
        let labeller = match (from, class_folder) {
            (Some(LabelFrom::NameRe), _) | (None, None) => Labeller::name_regex(self.label_re())?,
            (Some(LabelFrom::Parent), _) => Labeller::Parent,
            (None, Some(l)) => l,
            (Some(LabelFrom::Csv), _) if self.csv.is_none() => bail!("--label-from csv needs --csv FILE"),
            (Some(LabelFrom::Csv), _) => Labeller::Col { col: self.label_col.clone(), label_delim: self.label_delim },
        };
        if let Some(re) = &self.label_re
            && !matches!(labeller, Labeller::NameRegex(_))
        {
            let from = match &labeller {
                Labeller::Col { col, .. } => format!("the column {col} of --csv"),
                Labeller::Parent => "the parent folders (--label-from parent)".to_string(),
                _ => "the class folders".to_string(),
            };
            bail!("--label-re {re}: the labels of this run come from {from}, not from file names; \
                   drop --label-re, or give --label-from name-re to label by file name");
        }
        if self.label_delim.is_some() && !matches!(labeller, Labeller::Col { .. }) {
            bail!("--label-delim splits the cells of --csv's label column: it needs --csv FILE (labels from the CSV)");
        }
        let splitter = match (&self.valid_col, &self.valid_list, &layout) {
            (Some(_), _, _) if self.csv.is_none() => bail!("--valid-col needs --csv FILE"),
            (Some(c), _, _) => Splitter::Col(c.clone()),
            (None, Some(_), Some(FolderLayout::Split { train, valid, .. })) => {
                bail!("--valid-list: the folder is already split into {train}/ and {valid}/; give one or the other")
            }
            (None, Some(list), _) => Splitter::File(cwd.join(list)),
            (None, None, Some(FolderLayout::Split { root, train, valid, .. })) => {
                Splitter::TopFolder { root: root.clone(), train_name: train.clone(), valid_name: valid.clone() }
            }
            (None, None, _) => Splitter::Random { valid_pct: self.valid_pct, seed: self.seed },
        };
        Ok(DataBlock::new(source, labeller)
            .splitter(splitter)
            .item_tfm(Some(ItemTfm::resize(self.presize)))
            .bs(self.bs)
            .seed(self.seed)
            .workers(self.workers.unwrap_or_else(default_workers))
            .device(parse_device(&self.device)?)
            .skip_bad(self.skip_bad)
            .label_delim(self.label_delim)
            .balance(self.balance))
    }
}

/// A batch size (`--bs`): a whole number of at least 1.
pub(crate) fn parse_bs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a batch size of at least 1 image, got '{s}'")),
    }
}

/// `--label-delim`: exactly one character (`' '`, `;`, `|`, …).
fn parse_delim(s: &str) -> Result<char, String> {
    let mut c = s.chars();
    match (c.next(), c.next()) {
        (Some(d), None) => Ok(d),
        _ => Err(format!("expected one character such as ' ' or ';', got '{s}'")),
    }
}

/// Arguments of `kestrel data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// What to show.
    #[command(subcommand)]
    pub command: DataCommand,
}

/// The `kestrel data` subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Every step of the pipeline on one item, then the batch shapes (fastai
    /// `DataBlock.summary`); stops at the first failing step and says why.
    Summary(SummaryArgs),
    /// Draw a batch as a PNG grid with each label under its image (fastai `show_batch`).
    ShowBatch(ShowBatchArgs),
}

/// Arguments of `kestrel data summary`.
#[derive(Args, Debug)]
pub struct SummaryArgs {
    /// The data to summarise.
    #[command(flatten)]
    pub data: DataOpts,
    /// The batch augmentation the batches go through (as `fine-tune` trains with it).
    #[command(flatten)]
    pub aug: AugOpts,
    /// Leave out the batch transforms: the batch is shown as presized `u8`.
    #[arg(long)]
    pub no_aug: bool,
}

/// Arguments of `kestrel data show-batch`.
#[derive(Args, Debug)]
pub struct ShowBatchArgs {
    /// The data to show.
    #[command(flatten)]
    pub data: DataOpts,
    /// fastai's batch augmentation, `aug_transforms(...)` as `fine-tune` trains with it
    /// (flips, rotation, zoom, warp, lighting, random-resized crop) with ImageNet
    /// normalisation: the same options and defaults as `fine-tune`.
    #[command(flatten)]
    pub aug: AugOpts,
    /// Show the items as presized, without the batch augmentation.
    #[arg(long)]
    pub no_aug: bool,
    /// PNG file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Rows of the grid.
    #[arg(long, default_value_t = 3)]
    pub nrows: usize,
    /// Columns of the grid.
    #[arg(long, default_value_t = 3)]
    pub ncols: usize,
    /// Show one training image repeated through the transforms, to see their variety
    /// (fastai `show_batch(unique=True)`).
    #[arg(long)]
    pub unique: bool,
    /// Show a validation batch instead of a training batch (fastai `dls.valid.show_batch()`).
    #[arg(long)]
    pub valid_batch: bool,
}

/// The ImageNet-normalised batch transforms of `aug` (what `data` shows; `fine-tune`
/// uses the architecture's own statistics), or none with `no_aug`.
fn batch_tfms(aug: &AugOpts, no_aug: bool) -> crate::Result<(Option<Arc<dyn crate::transforms::BatchTransform>>, Denorm)> {
    if no_aug {
        return Ok((None, Denorm::None));
    }
    let norm = Normalize::imagenet();
    let t = BatchTfms::new(Some(aug.to_aug()?), aug.size, norm)?;
    Ok((Some(Arc::new(t)), Denorm::Stats { mean: norm.mean, std: norm.std }))
}

/// Runs `kestrel data`.
///
/// Errors: bad options, a failing summary step, an unreadable dataset or unwritable PNG.
pub fn run(args: DataArgs) -> crate::Result<()> {
    match args.command {
        DataCommand::Summary(a) => {
            let (tfms, _) = batch_tfms(&a.aug, a.no_aug)?;
            let s = summary(&a.data.to_datablock()?.batch_tfms(tfms));
            print!("{s}");
            if !s.ok {
                bail!("the data pipeline failed (see the step above)");
            }
            Ok(())
        }
        DataCommand::ShowBatch(a) => {
            if !a.no_aug { a.aug.check_presize(a.data.presize)?; }
            let (tfms, denorm) = batch_tfms(&a.aug, a.no_aug)?;
            let block = a.data.to_datablock()?.batch_tfms(tfms);
            // One batch of the photos shown (fastai's `max_n` = nrows × ncols), at most the
            // training set: a set smaller than --bs can still be looked at.
            let n_train = block.datasets()?.train.len();
            let bs = (a.nrows * a.ncols).min(n_train).max(1);
            let dls = block.bs(bs).image_dataloaders()?;
            let dl = if a.valid_batch { &dls.valid } else { &dls.train };
            show_loader_batch(dl, &dls.datasets.vocab, a.nrows, a.ncols, a.unique, denorm, &a.out)?;
            println!("wrote {}", a.out.display());
            Ok(())
        }
    }
}
