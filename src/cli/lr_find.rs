//! `kestrel lr-find`: fastai's `learn.lr_find()` on its own — the learning-rate sweep on
//! the same data and model as `fine-tune`, its four suggestions, the fastai book's two
//! rules of thumb, and the plot. `--from MODEL --unfreeze` is the book's second sweep,
//! after the head has been trained.

use super::aug::AugOpts;
use super::data::DataOpts;
use super::model::ModelOpts;
use crate::callbacks::Interrupted;
use crate::export::read_model_file;
use crate::learner::lr_find::MIN_NUM_IT;
use crate::learner::{LrFindOptions, LrFindResult, vision_aug_batch_tfms};
use crate::models::weights::load_into;
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `kestrel lr-find`.
#[derive(Args, Debug, Clone)]
pub struct LrFindArgs {
    /// The data (the same options as `kestrel fine-tune`).
    #[command(flatten)]
    pub data: DataOpts,
    /// The network (the same options as `kestrel fine-tune`).
    #[command(flatten)]
    pub model: ModelOpts,
    /// The batch augmentation (fastai `aug_transforms`; the same options as `fine-tune`).
    #[command(flatten)]
    pub aug: AugOpts,
    /// Start from a model file written by `fine-tune` (its architecture and trained weights;
    /// the data must have the same classes) instead of the pretrained network with a new
    /// head (fastai: `lr_find` after `fit_one_cycle`).
    #[arg(long, value_name = "MODEL")]
    pub from: Option<PathBuf>,
    /// Sweep with the whole network trainable (fastai `learn.unfreeze(); learn.lr_find()`,
    /// the book's second sweep). Default: body frozen, only the head and BatchNorm
    /// layers train, as before `fine_tune`'s first phase.
    #[arg(long)]
    pub unfreeze: bool,
    /// Batches of the sweep (fastai `num_it=100`), at least 10: the suggestions leave out
    /// the first tenth and the last 5 points.
    #[arg(long, default_value_t = 100, value_parser = parse_num_it)]
    pub num_it: usize,
    /// First learning rate of the sweep (fastai `start_lr=1e-7`).
    #[arg(long, default_value_t = 1e-7)]
    pub start_lr: f64,
    /// Last learning rate of the sweep (fastai `end_lr=10`).
    #[arg(long, default_value_t = 10.0)]
    pub end_lr: f64,
    /// PNG file of the plot (fastai `plot_lr_find`).
    #[arg(long, value_name = "FILE", default_value = "lr_find.png")]
    pub out: PathBuf,
}

/// Runs `kestrel lr-find`: builds the learner as `fine-tune` does (or from `--from`),
/// freezes the body unless `--unfreeze`, sweeps, prints the suggestions and writes the plot.
///
/// Ctrl-C or SIGTERM ends the sweep after its batch: nothing was trained, so nothing is
/// saved, and the error gives the command to run again.
///
/// Errors: bad options, the data and weight errors, a model file whose classes differ
/// from the data's, a sweep too short to suggest anything, an unwritable PNG, an interrupt.
pub fn run(args: LrFindArgs) -> crate::Result<()> {
    crate::callbacks::install_handler()?;
    let r = lr_find(&args);
    if crate::callbacks::interrupt_requested() {
        let cmd: Vec<String> = std::env::args().map(|a| super::fine_tune::shell_quote(&a)).collect();
        return Err(Interrupted(format!("interrupted during lr_find (nothing trained, nothing to save); run the same command again:\n  {}", cmd.join(" "))).into());
    }
    let r = r?;
    print_suggestions(&r, args.num_it);
    println!("plot: {}", args.out.display());
    Ok(())
}

/// The sweep of `kestrel lr-find`, with the plot written to `--out`.
///
/// Errors: as [`run`].
pub fn lr_find(args: &LrFindArgs) -> crate::Result<LrFindResult> {
    args.aug.check_presize(args.data.presize)?;
    args.data.check_training_bs()?;
    let mut model = args.model.clone();
    let file = match &args.from {
        Some(p) => {
            let f = read_model_file(p)?;
            // The file has the architecture and every weight: no pretrained body needed.
            model.arch = f.meta.card.arch.name.clone();
            model.no_pretrained = true;
            model.weights = None;
            Some((p.clone(), f))
        }
        None => None,
    };
    let arch = model.arch()?;
    let tfms = vision_aug_batch_tfms(arch, args.aug.to_aug()?)?;
    let dls = args.data.to_datablock()?.batch_tfms(Some(Arc::new(tfms))).image_dataloaders()?;
    let mut learn = model.learner(dls.dls(), args.data.seed, |learn| {
        let Some((path, f)) = file else { return Ok(()) };
        let (theirs, ours) = (&f.meta.card.vocab, learn.dls.vocab.items());
        if theirs.as_slice() != ours {
            bail!("{}: the model's {} classes ({}) are not the data's {} classes ({}); lr-find --from needs the \
                   data the model was trained on", path.display(), theirs.len(), preview(theirs), ours.len(), preview(ours));
        }
        load_into(learn.model.var_store_mut(), f.tensors.into_iter().collect(), true)
            .with_context(|| format!("{}: loading its weights", path.display()))?;
        Ok(())
    })?;
    if args.unfreeze { learn.unfreeze() } else { learn.freeze() }
    println!("lr_find: {} {} ({}), {} batches of {} from lr {:e} to {:e}, precision {}",
             match (&args.from, args.model.no_pretrained) {
                 (Some(_), _) => "trained",
                 (None, true) => "randomly initialised",
                 (None, false) => "pretrained",
             },
             arch,
             if args.unfreeze { "unfrozen" } else { "body frozen" }, args.num_it, args.data.bs,
             args.start_lr, args.end_lr, learn.precision);
    let o = LrFindOptions { start_lr: args.start_lr, end_lr: args.end_lr, num_it: args.num_it, ..LrFindOptions::default() };
    let r = learn.lr_find(o);
    if crate::callbacks::interrupt_requested() {
        return Err(Interrupted("interrupted during the sweep: no plot written (a partial curve suggests nothing); run the command again".into()).into());
    }
    let r = r?;
    r.plot(&args.out)?;
    Ok(r)
}

/// The first few names of a vocabulary, for error messages.
fn preview(v: &[String]) -> String {
    let mut s = v.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 4 { s.push_str(", …"); }
    s
}

/// Prints the sweep's length and fastai's four suggestions, naming the fastai book's two
/// rules of thumb (chapter 5) next to the suggestions that follow them.
pub fn print_suggestions(r: &LrFindResult, num_it: usize) {
    let stopped = if r.lrs.len() < num_it { format!(" (stopped early: the loss diverged at lr {:.2e})", r.lrs.last().copied().unwrap_or(f64::NAN)) } else { String::new() };
    println!("lr_find: {} batches{stopped}; suggested learning rates:", r.lrs.len());
    println!("  valley      {:.2e}  fastai's default: a point inside the longest valley of the loss curve", r.valley.lr);
    println!("  minimum/10  {:.2e}  rule of thumb 1: one order of magnitude below the minimum (the lowest loss at {:.2e})",
             r.minimum.lr, r.minimum.point_lr);
    println!("  steep       {:.2e}  the steepest descent of the loss (the book's rule of thumb 2: the last point where the loss clearly decreases)", r.steep.lr);
    println!("  slide       {:.2e}  fastai's interval slide rule", r.slide.lr);
}

/// `--num-it`: a whole number of at least [`MIN_NUM_IT`].
fn parse_num_it(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= MIN_NUM_IT => Ok(n),
        _ => Err(format!("expected at least {MIN_NUM_IT} batches (the suggestions leave out the first tenth and the last 5 points), got '{s}'")),
    }
}
