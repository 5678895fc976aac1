//! The image `DataLoader` (fastai `TfmdDL`): worker threads decode and resize items in
//! parallel behind a bounded prefetch window, and the worker that finishes a batch's last
//! item collates it as `u8` (N, 3, H, W) (as PyTorch's DataLoader workers collate); batches
//! come out in order, on the requested device, through the batch transforms.

use super::decode::decode_rgb;
use super::resize::ItemTfm;
use super::{Batch, BatchSource};
use crate::distributed::Shard;
use crate::transforms::BatchTransform;
use crate::util::rng::{Rng, derived};
use anyhow::{Context, anyhow, bail};
use crossbeam_channel::{Receiver, Sender, unbounded};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

/// The context of an error loading one item (reading, decoding or presizing its file):
/// callers tell a bad photo from other failures with `anyhow::Error::downcast_ref`
/// (fine-tune then keeps the training done in a checkpoint).
#[derive(Debug, Clone)]
pub struct ItemError {
    /// The file that failed.
    pub path: PathBuf,
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "loading item {} (skip_bad, kestrel's --skip-bad, leaves such files out)", self.path.display())
    }
}


/// Settings of one [`ImageDataLoader`] (fastai `DataLoader` arguments).
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Batch size (fastai default 64).
    pub bs: usize,
    /// Reshuffle the order every epoch (training).
    pub shuffle: bool,
    /// Leave out the last incomplete batch (training).
    pub drop_last: bool,
    /// Seed of the shuffles and of the random item/batch transforms.
    pub seed: u64,
    /// Worker threads decoding and resizing; 0 runs everything on the calling thread.
    pub workers: usize,
    /// Batches prepared ahead of the one being consumed (bounded prefetch), ≥ 1.
    pub prefetch: usize,
    /// Device the batches are placed on.
    pub device: Device,
    /// True for the training loader: random item transforms, `train=true` batch transforms.
    pub train: bool,
    /// Leave out files that fail to decode, with a logged warning each and a count
    /// ([`ImageDataLoader::n_skipped`]), instead of returning an error.
    pub skip_bad: bool,
    /// Sampling weights, one per item (fastai `WeightedDL`): each pass draws `n` items
    /// with replacement, item `i` with probability `weights[i] / Σ weights`, instead of a
    /// permutation. `None`: every item once per pass.
    pub weights: Option<Arc<Vec<f64>>>,
}

/// One decoded, transformed item: (height, width) and CHW `u8` pixels.
type ItemOut = (u32, u32, Vec<u8>);

struct Inner {
    paths: Vec<PathBuf>,
    targets: Vec<i64>,
    /// Multi-label targets: (number of classes, class indices of each item).
    multi: Option<(usize, Vec<Vec<i64>>)>,
    item_tfm: Option<ItemTfm>,
    train: bool,
    seed: u64,
    skip_bad: bool,
    /// Items (indices into `paths`) `skip_bad` left out so far.
    skipped: Mutex<BTreeSet<usize>>,
}

/// Mixes a seed and an epoch into one seed for per-item streams.
fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Inner {
    /// Decodes item `idx` and applies the item transform with the generator of
    /// (seed, epoch, stream); returns CHW bytes.
    fn load(&self, idx: usize, epoch: u64, stream: u64) -> crate::Result<ItemOut> {
        let path = &self.paths[idx];
        let img = decode_rgb(path)?;
        let img = match &self.item_tfm {
            Some(t) => {
                let mut rng = derived(epoch_seed(self.seed, epoch), stream);
                t.apply(&img, self.train, &mut rng).with_context(|| format!("item transform on {}", path.display()))?
            }
            None => img,
        };
        let (w, h) = img.dimensions();
        Ok((h, w, hwc_to_chw(img.as_raw(), (w * h) as usize)))
    }

    /// Collates the loaded items `loaded` (item index, load result) of one batch into
    /// CPU tensors: x (n, 3, H, W) `u8`, y (n) `i64`. With `skip_bad` failed items are
    /// left out (logged and counted); `None` when none is left.
    ///
    /// Errors: a failed item (without `skip_bad`), naming its file; items of different
    /// sizes, naming two of them.
    fn collate(&self, loaded: Vec<(usize, crate::Result<ItemOut>)>) -> crate::Result<Option<(Tensor, Tensor)>> {
        let mut items = Vec::with_capacity(loaded.len());
        for (idx, r) in loaded {
            match r {
                Ok(it) => items.push((idx, it)),
                Err(e) if self.skip_bad => {
                    // Warned once per file, not every epoch.
                    if self.skipped.lock().unwrap_or_else(|p| p.into_inner()).insert(idx) {
                        log::warn!("skip_bad: leaving out {}: {e:#}", self.paths[idx].display());
                    }
                }
                Err(e) => return Err(e.context(ItemError { path: self.paths[idx].clone() })),
            }
        }
        let Some((first, (h, w, _))) = items.first() else { return Ok(None) };
        let (h, w) = (*h, *w);
        for (idx, (ih, iw, _)) in &items {
            if (*ih, *iw) != (h, w) {
                bail!(
                    "cannot collate {} ({iw}x{ih}) with {} ({w}x{h}): images of one batch need one size; add an item transform (Resize)",
                    self.paths[*idx].display(),
                    self.paths[*first].display()
                );
            }
        }
        let x = collate_u8(items.iter().map(|(_, (_, _, px))| px.as_slice()), items.len(), h, w);
        let y = match &self.multi {
            Some((c, labels)) => {
                let mut hot = vec![0f32; items.len() * c];
                for (row, (idx, _)) in items.iter().enumerate() {
                    for &t in &labels[*idx] { hot[row * c + t as usize] = 1.0; }
                }
                Tensor::from_slice(&hot).view([items.len() as i64, *c as i64])
            }
            None => Tensor::from_slice(&items.iter().map(|(idx, _)| self.targets[*idx]).collect::<Vec<_>>()),
        };
        Ok(Some((x, y)))
    }
}

pub(crate) use kestrel_image::hwc_to_chw;
/// `n` indices drawn with replacement, index `i` with probability `w[i] / Σ w`
/// (inverse-CDF sampling on the cumulative weights).
fn weighted_draws(w: &[f64], n: usize, rng: &mut Rng) -> Vec<usize> {
    use rand::Rng as _;
    let mut cum = Vec::with_capacity(w.len());
    let mut total = 0.0;
    for &x in w {
        total += x.max(0.0);
        cum.push(total);
    }
    if w.is_empty() || total <= 0.0 {
        return (0..n.min(w.len())).collect();
    }
    (0..n)
        .map(|_| {
            let u = rng.random::<f64>() * total;
            cum.partition_point(|&c| c <= u).min(w.len() - 1)
        })
        .collect()
}


/// Stacks `n` CHW `u8` images of `h`×`w` into one (n, 3, h, w) `u8` CPU tensor with a
/// single copy of the pixels.
pub(crate) fn collate_u8<'a>(items: impl Iterator<Item = &'a [u8]>, n: usize, h: u32, w: u32) -> Tensor {
    let item_len = 3 * h as usize * w as usize;
    let x = Tensor::empty([n as i64, 3, h as i64, w as i64], (Kind::Uint8, Device::Cpu));
    // SAFETY: `x` was just allocated, is contiguous, holds exactly n·item_len bytes and is
    // not shared with anything else while the slice lives.
    let dst = unsafe { std::slice::from_raw_parts_mut(x.data_ptr() as *mut u8, n * item_len) };
    for (chunk, px) in dst.chunks_exact_mut(item_len).zip(items) {
        chunk.copy_from_slice(px);
    }
    x
}

/// A loader over image files with integer targets; implements [`BatchSource`].
pub struct ImageDataLoader {
    inner: Arc<Inner>,
    cfg: LoaderConfig,
    batch_tfms: Option<Arc<dyn BatchTransform>>,
    /// This rank's share of every pass (data-parallel training), all items when `None`.
    shard: Option<Shard>,
}

impl ImageDataLoader {
    /// A loader over `paths` with class indices `targets` (same length), resizing with
    /// `item_tfm` (needed unless all images share one size) and finishing batches with
    /// `batch_tfms` on the device.
    ///
    /// Errors: `paths` and `targets` differ in length, `bs` is 0.
    pub fn new(
        paths: Vec<PathBuf>,
        targets: Vec<i64>,
        item_tfm: Option<ItemTfm>,
        batch_tfms: Option<Arc<dyn BatchTransform>>,
        cfg: LoaderConfig,
    ) -> crate::Result<Self> {
        if paths.len() != targets.len() {
            bail!("{} items but {} targets", paths.len(), targets.len());
        }
        if let Some(w) = &cfg.weights {
            if w.len() != paths.len() {
                bail!("{} items but {} sampling weights", paths.len(), w.len());
            }
            if let Some(x) = w.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
                bail!("sampling weights must be finite and non-negative, got {x}");
            }
        }
        if cfg.bs == 0 {
            bail!("batch size must be at least 1");
        }
        let inner = Arc::new(Inner {
            paths,
            targets,
            multi: None,
            item_tfm,
            train: cfg.train,
            seed: cfg.seed,
            skip_bad: cfg.skip_bad,
            skipped: Mutex::new(BTreeSet::new()),
        });
        Ok(Self { inner, cfg, batch_tfms, shard: None })
    }

    /// Makes this a multi-label loader (fastai `MultiCategoryBlock`): batches carry
    /// one-hot targets `f32` (N, `n_classes`) built from each item's class indices `labels`
    /// (one list per item, dataset order) instead of the class indices of [`Self::new`].
    ///
    /// Errors: `labels` and the items differ in length, or an index is not below `n_classes`.
    pub fn multi_label(mut self, n_classes: usize, labels: Vec<Vec<i64>>) -> crate::Result<Self> {
        if labels.len() != self.inner.paths.len() {
            bail!("{} items but {} label lists", self.inner.paths.len(), labels.len());
        }
        if let Some(t) = labels.iter().flatten().find(|&&t| t < 0 || t as usize >= n_classes) {
            bail!("label index {t} is out of range for {n_classes} classes");
        }
        let inner = Arc::get_mut(&mut self.inner).context("multi_label: the loader is already in use")?;
        inner.multi = Some((n_classes, labels));
        Ok(self)
    }

    /// True for a multi-label loader ([`Self::multi_label`]).
    pub fn is_multi_label(&self) -> bool {
        self.inner.multi.is_some()
    }

    /// This loader's items, in order and all of them (no shuffle, no `drop_last`), with the
    /// random item and batch transforms of the training loader `train`: the augmented
    /// loader of test-time augmentation over a validation set (fastai `Learner.tta` sets
    /// the validation dataset's split to training). Passes differ by their `epoch`. The
    /// training loader's sampling weights (`--balance`) are not carried over: they belong
    /// to its items.
    ///
    /// Errors: as [`ImageDataLoader::new`].
    pub fn augmented_like(&self, train: &ImageDataLoader) -> crate::Result<Self> {
        let cfg = LoaderConfig { shuffle: false, drop_last: false, train: true, bs: self.cfg.bs, weights: None, ..train.cfg.clone() };
        Self::new(self.paths().to_vec(), self.targets().to_vec(), train.inner.item_tfm.clone(), train.batch_tfms.clone(), cfg)
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// The item paths, dataset order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.inner.paths
    }

    /// The targets, dataset order.
    pub fn targets(&self) -> &[i64] {
        &self.inner.targets
    }

    /// Number of bad files left out so far (with `skip_bad`), each counted once.
    pub fn n_skipped(&self) -> usize {
        self.inner.skipped.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The same loader restricted to one rank's share of every pass (PyTorch
    /// `DistributedSampler`, see [`Shard`]); its batch transforms draw a per-rank stream.
    pub fn with_shard(&self, shard: Shard) -> Self {
        Self { inner: self.inner.clone(), cfg: self.cfg.clone(), batch_tfms: self.batch_tfms.clone(), shard: Some(shard) }
    }

    /// The share this loader is restricted to, if any.
    pub fn shard(&self) -> Option<Shard> {
        self.shard
    }

    /// The item order of pass `epoch`: with sampling weights, `n` weighted draws with
    /// replacement (fastai `WeightedDL.get_idxs`: `np.random.choice(n, n, p=wgts)`); else a
    /// Fisher–Yates permutation from `derived(seed, epoch)` when shuffling, dataset order
    /// otherwise. With a [`Shard`], this rank's share of it.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let n = self.inner.paths.len();
        let order = if let Some(w) = &self.cfg.weights {
            weighted_draws(w, n, &mut derived(self.cfg.seed, epoch))
        } else if self.cfg.shuffle {
            super::split::permutation(n, &mut derived(self.cfg.seed, epoch))
        } else {
            (0..n).collect()
        };
        match self.shard {
            Some(s) => s.take(&order),
            None => order,
        }
    }

    /// Number of items one pass orders (this rank's share with a [`Shard`]).
    fn n_ordered(&self) -> usize {
        let n = self.inner.paths.len();
        self.shard.map_or(n, |s| s.len(n))
    }

    /// The first batch of epoch 0 (fastai `one_batch`). Errors: no batch, or the batch's
    /// error.
    pub fn one_batch(&self) -> crate::Result<Batch> {
        self.batches(0).next().unwrap_or_else(|| Err(anyhow!("the loader yields no batch ({} items, bs {})", self.n_items(), self.cfg.bs)))
    }

    /// fastai `show_batch(unique=True)`: item `idx` loaded `bs` times (each with its own
    /// random item transform) and passed through the batch transforms as a training
    /// batch, to see the augmentation's variety on one photo.
    pub fn unique_batch(&self, idx: usize) -> crate::Result<Batch> {
        if idx >= self.inner.paths.len() {
            bail!("item {idx} out of range ({} items)", self.inner.paths.len());
        }
        let path = &self.inner.paths[idx];
        let loaded = (0..self.cfg.bs)
            .map(|k| Ok((idx, Ok(self.inner.load(idx, 0, k as u64).with_context(|| format!("loading item {}", path.display()))?))))
            .collect::<crate::Result<_>>()?;
        let (x, y) = self.inner.collate(loaded)?.context("no item to show")?;
        let mut rng = derived(self.cfg.seed ^ 0x5EED_BA7C, 0);
        self.finish(x, y, &mut rng, true)
    }

    /// Moves a collated CPU batch to the device and runs the batch transforms.
    fn finish(&self, x: Tensor, y: Tensor, rng: &mut Rng, train: bool) -> crate::Result<Batch> {
        let (x, y) = match self.cfg.device {
            Device::Cpu => (x, y),
            d @ Device::Cuda(_) => (x.f_pin_memory(d)?.f_to_device_(d, Kind::Uint8, true, false)?, y.f_to_device_(d, y.kind(), true, false)?),
            d => (x.f_to_device(d)?, y.f_to_device(d)?),
        };
        let x = match &self.batch_tfms {
            Some(t) => t.apply(&x, train, rng).context("batch transform")?,
            None => x,
        };
        Ok(Batch { x, y })
    }
}

impl BatchSource for ImageDataLoader {
    fn n_batches(&self) -> usize {
        let n = self.n_ordered();
        if self.cfg.drop_last { n / self.cfg.bs } else { n.div_ceil(self.cfg.bs) }
    }

    fn n_items(&self) -> usize {
        if self.cfg.drop_last { self.n_batches() * self.cfg.bs } else { self.n_ordered() }
    }

    fn device(&self) -> Device {
        self.cfg.device
    }

    fn skipped_items(&self) -> Vec<usize> {
        self.inner.skipped.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    fn batches(&self, epoch: u64) -> Box<dyn Iterator<Item = crate::Result<Batch>> + '_> {
        Box::new(EpochIter::new(self, epoch))
    }
}

/// The loaded items of one batch, filled in by the workers in any order; the worker that
/// loads its last item collates it (as PyTorch's DataLoader workers collate), so the
/// consuming thread only moves finished batches on.
struct Slot {
    batch: usize,
    loaded: std::sync::Mutex<Vec<Option<(usize, crate::Result<ItemOut>)>>>,
    remaining: AtomicUsize,
}

/// A collated batch on the CPU, `None` when `skip_bad` left out every item.
type Collated = crate::Result<Option<(Tensor, Tensor)>>;

/// One item to load: its position in the batch's slot, its item index, its slot.
type Task = (usize, usize, Arc<Slot>);

/// The batches of one pass. Dropping it early stops and joins the workers.
struct EpochIter<'a> {
    dl: &'a ImageDataLoader,
    epoch: u64,
    order: Vec<usize>,
    n_batches: usize,
    next_batch: usize,
    submitted_batches: usize,
    pending: HashMap<usize, Collated>,
    tasks: Option<Sender<Task>>,
    results: Option<Receiver<(usize, Collated)>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    rng: Rng,
    done: bool,
}

impl<'a> EpochIter<'a> {
    fn new(dl: &'a ImageDataLoader, epoch: u64) -> Self {
        let order = dl.order(epoch);
        let stop = Arc::new(AtomicBool::new(false));
        let mut it = Self {
            dl,
            epoch,
            order,
            n_batches: dl.n_batches(),
            next_batch: 0,
            submitted_batches: 0,
            pending: HashMap::new(),
            tasks: None,
            results: None,
            stop: stop.clone(),
            workers: Vec::new(),
            rng: derived(dl.shard.map_or(dl.cfg.seed, |s| s.mix_seed(dl.cfg.seed)) ^ 0xBA7C_4000_0000_0000, epoch),
            done: false,
        };
        if dl.cfg.workers > 0 {
            let (task_tx, task_rx) = unbounded::<Task>();
            let (res_tx, res_rx) = unbounded();
            for _ in 0..dl.cfg.workers {
                let (task_rx, res_tx, stop, inner) = (task_rx.clone(), res_tx.clone(), stop.clone(), dl.inner.clone());
                it.workers.push(std::thread::spawn(move || {
                    while let Ok((k, idx, slot)) = task_rx.recv() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let r = inner.load(idx, epoch, idx as u64);
                        let full = {
                            let mut loaded = slot.loaded.lock().unwrap_or_else(|e| e.into_inner());
                            loaded[k] = Some((idx, r));
                            slot.remaining.fetch_sub(1, Ordering::AcqRel) == 1
                        };
                        if full {
                            let loaded = std::mem::take(&mut *slot.loaded.lock().unwrap_or_else(|e| e.into_inner()));
                            let collated = inner.collate(loaded.into_iter().flatten().collect());
                            if res_tx.send((slot.batch, collated)).is_err() {
                                break;
                            }
                        }
                    }
                }));
            }
            it.tasks = Some(task_tx);
            it.results = Some(res_rx);
        }
        it
    }

    fn batch_items(&self, b: usize) -> &[usize] {
        let bs = self.dl.cfg.bs;
        &self.order[b * bs..((b + 1) * bs).min(self.order.len())]
    }

    /// Submits the items of every batch up to `next_batch + prefetch`.
    fn submit(&mut self) {
        let Some(tx) = &self.tasks else { return };
        let last = (self.next_batch + self.dl.cfg.prefetch.max(1)).min(self.n_batches - 1);
        while self.submitted_batches <= last {
            let b = self.submitted_batches;
            let idxs = self.batch_items(b);
            let slot = Arc::new(Slot {
                batch: b,
                loaded: std::sync::Mutex::new((0..idxs.len()).map(|_| None).collect()),
                remaining: AtomicUsize::new(idxs.len()),
            });
            for (k, &idx) in idxs.iter().enumerate() {
                if tx.send((k, idx, slot.clone())).is_err() {
                    return;
                }
            }
            self.submitted_batches += 1;
        }
    }

    /// Batch `b` collated: by the workers, or here when there are none.
    fn collated(&mut self, b: usize) -> Collated {
        let Some(rx) = &self.results else {
            let loaded = self.batch_items(b).iter().map(|&idx| (idx, self.dl.inner.load(idx, self.epoch, idx as u64))).collect();
            return self.dl.inner.collate(loaded);
        };
        loop {
            if let Some(r) = self.pending.remove(&b) {
                return r;
            }
            let (got, r) = rx.recv().map_err(|_| anyhow!("the data loader's worker threads stopped unexpectedly"))?;
            self.pending.insert(got, r);
        }
    }

    fn next_batch(&mut self) -> Option<crate::Result<Batch>> {
        while self.next_batch < self.n_batches {
            self.submit();
            let b = self.next_batch;
            self.next_batch += 1;
            match self.collated(b) {
                Ok(Some((x, y))) => return Some(self.dl.finish(x, y, &mut self.rng, self.dl.cfg.train)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks = None;
        self.results = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Iterator for EpochIter<'_> {
    type Item = crate::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_batch();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
            self.shutdown();
        }
        r
    }
}

impl Drop for EpochIter<'_> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
