//! `kestrel data summary | show-batch`: look at a dataset as a `DataBlock` sees it.

use crate::data::show::{Denorm, show_loader_batch};
use crate::data::summary::summary;
use crate::data::{DataBlock, ItemTfm, Labeller, PETS_PATTERN, Source, Splitter};
use crate::transforms::{BatchTfms, Normalize, aug_transforms};
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
    /// csv (a column of --csv). Default: csv when --csv is given, else name-re.
    #[arg(long, value_enum, value_name = "HOW")]
    pub label_from: Option<LabelFrom>,
    /// Regular expression applied to the file name; its first group is the label
    /// (fastai `RegexLabeller`). Default: the book's pet-breed pattern.
    #[arg(long, value_name = "REGEX", default_value = PETS_PATTERN)]
    pub label_re: String,
    /// CSV file with one row per image (fastai `ImageDataLoaders.from_csv` / `ColReader`).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// CSV column holding the image file names.
    #[arg(long, value_name = "COL", default_value = "fname")]
    pub fn_col: String,
    /// CSV column holding the labels.
    #[arg(long, value_name = "COL", default_value = "label")]
    pub label_col: String,
    /// CSV column of booleans: true puts the row in the validation set (fastai
    /// `ColSplitter`). Without it the split is random (--valid-pct, --seed).
    #[arg(long, value_name = "COL")]
    pub valid_col: Option<String>,
    /// Fraction of the items held out for validation by `RandomSplitter`.
    #[arg(long, value_name = "PCT", default_value_t = 0.2)]
    pub valid_pct: f64,
    /// Random seed of the split, the shuffles and the random transforms: the same seed
    /// gives the same split and batches.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Presizing: every image is first resized with `Resize(presize)` (crop the largest
    /// square: random on training, centred on validation) on the CPU workers.
    #[arg(long, value_name = "PX", default_value_t = 460)]
    pub presize: u32,
    /// Batch size: the number of images in each batch.
    #[arg(long, default_value_t = 64)]
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
}

impl DataOpts {
    /// The `DataBlock` these options describe (no batch transforms; callers add theirs).
    ///
    /// Errors: neither --folder nor --csv, --label-from csv without --csv, an invalid
    /// regex, an unknown device.
    pub fn to_datablock(&self) -> crate::Result<DataBlock> {
        let cwd = std::env::current_dir()?;
        let folder = self.folder.as_ref().map(|f| cwd.join(f));
        let source = match (&self.csv, &folder) {
            (Some(csv), _) => Source::Csv { file: cwd.join(csv), fn_col: self.fn_col.clone(), pref: folder.clone(), suffix: String::new() },
            (None, Some(f)) => Source::Folder { path: f.clone(), recurse: true },
            (None, None) => bail!("say where the images are: --folder DIR, or --csv FILE"),
        };
        let from = self.label_from.unwrap_or(if self.csv.is_some() { LabelFrom::Csv } else { LabelFrom::NameRe });
        let labeller = match from {
            LabelFrom::NameRe => Labeller::name_regex(&self.label_re)?,
            LabelFrom::Parent => Labeller::Parent,
            LabelFrom::Csv if self.csv.is_none() => bail!("--label-from csv needs --csv FILE"),
            LabelFrom::Csv => Labeller::Col { col: self.label_col.clone(), label_delim: None },
        };
        let splitter = match &self.valid_col {
            Some(c) if self.csv.is_some() => Splitter::Col(c.clone()),
            Some(_) => bail!("--valid-col needs --csv FILE"),
            None => Splitter::Random { valid_pct: self.valid_pct, seed: self.seed },
        };
        Ok(DataBlock::new(source, labeller)
            .splitter(splitter)
            .item_tfm(Some(ItemTfm::resize(self.presize)))
            .bs(self.bs)
            .seed(self.seed)
            .workers(self.workers.unwrap_or_else(default_workers))
            .device(parse_device(&self.device)?)
            .skip_bad(self.skip_bad))
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
    Summary(DataOpts),
    /// Draw a batch as a PNG grid with each label under its image (fastai `show_batch`).
    ShowBatch(ShowBatchArgs),
}

/// Arguments of `kestrel data show-batch`.
#[derive(Args, Debug)]
pub struct ShowBatchArgs {
    /// The data to show.
    #[command(flatten)]
    pub data: DataOpts,
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
    /// Show a validation batch instead of a training batch.
    #[arg(long)]
    pub valid: bool,
    /// Also apply fastai's batch augmentation, `aug_transforms(size=SIZE,
    /// min_scale=--min-scale)` as `fine-tune` trains with it (flips, rotation, zoom, warp,
    /// lighting, random-resized crop), in pixels. Without it the items are shown as presized.
    #[arg(long, value_name = "SIZE")]
    pub aug_size: Option<i64>,
    /// `min_scale` of the augmentation's random-resized crop (with --aug-size).
    #[arg(long, default_value_t = 0.75, requires = "aug_size")]
    pub min_scale: f64,
}

/// Runs `kestrel data`.
///
/// Errors: bad options, a failing summary step, an unreadable dataset or unwritable PNG.
pub fn run(args: DataArgs) -> crate::Result<()> {
    match args.command {
        DataCommand::Summary(opts) => {
            let s = summary(&opts.to_datablock()?);
            print!("{s}");
            if !s.ok {
                bail!("the data pipeline failed (see the step above)");
            }
            Ok(())
        }
        DataCommand::ShowBatch(a) => {
            let mut block = a.data.to_datablock()?;
            let mut denorm = Denorm::None;
            if let Some(size) = a.aug_size {
                let norm = Normalize::imagenet();
                let aug = aug_transforms().with_size(size).with_min_scale(a.min_scale);
                block = block.batch_tfms(Some(Arc::new(BatchTfms::new(Some(aug), size, norm)?)));
                denorm = Denorm::Stats { mean: norm.mean, std: norm.std };
            }
            let dls = block.image_dataloaders()?;
            let dl = if a.valid { &dls.valid } else { &dls.train };
            show_loader_batch(dl, &dls.datasets.vocab, a.nrows, a.ncols, a.unique, denorm, &a.out)?;
            println!("wrote {}", a.out.display());
            Ok(())
        }
    }
}
