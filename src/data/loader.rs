//! The image `DataLoader` (fastai `TfmdDL`): worker threads decode and resize items in
//! parallel behind a bounded prefetch window; batches come out in order, collated as
//! `u8` (N, 3, H, W) on the requested device, then through the batch transforms.

use super::decode::decode_rgb;
use super::resize::ItemTfm;
use super::{Batch, BatchSource};
use crate::transforms::BatchTransform;
use crate::util::rng::{Rng, derived};
use anyhow::{Context, anyhow, bail};
use crossbeam_channel::{Receiver, Sender, unbounded};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

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
}

/// One decoded, transformed item: (height, width) and CHW `u8` pixels.
type ItemOut = (u32, u32, Vec<u8>);

struct Inner {
    paths: Vec<PathBuf>,
    targets: Vec<i64>,
    item_tfm: Option<ItemTfm>,
    train: bool,
    seed: u64,
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
}

/// Interleaved RGB (H, W, 3) → planar (3, H, W).
fn hwc_to_chw(src: &[u8], n_px: usize) -> Vec<u8> {
    let mut out = vec![0u8; n_px * 3];
    let (r, rest) = out.split_at_mut(n_px);
    let (g, b) = rest.split_at_mut(n_px);
    for (i, px) in src.chunks_exact(3).enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
    out
}

/// A loader over image files with integer targets; implements [`BatchSource`].
pub struct ImageDataLoader {
    inner: Arc<Inner>,
    cfg: LoaderConfig,
    batch_tfms: Option<Arc<dyn BatchTransform>>,
    skipped: Arc<AtomicUsize>,
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
        if cfg.bs == 0 {
            bail!("batch size must be at least 1");
        }
        let inner = Arc::new(Inner { paths, targets, item_tfm, train: cfg.train, seed: cfg.seed });
        Ok(Self { inner, cfg, batch_tfms, skipped: Arc::new(AtomicUsize::new(0)) })
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

    /// Number of bad files left out so far (with `skip_bad`).
    pub fn n_skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The item order of pass `epoch`: a Fisher–Yates permutation from
    /// `derived(seed, epoch)` when shuffling, dataset order otherwise.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let n = self.inner.paths.len();
        if self.cfg.shuffle {
            super::split::permutation(n, &mut derived(self.cfg.seed, epoch))
        } else {
            (0..n).collect()
        }
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
        let items: Vec<(usize, ItemOut)> =
            (0..self.cfg.bs).map(|k| Ok((idx, self.inner.load(idx, 0, k as u64)?))).collect::<crate::Result<_>>()?;
        let mut rng = derived(self.cfg.seed ^ 0x5EED_BA7C, 0);
        self.finish(&items, &mut rng, true)
    }

    /// Collates items into a `u8` batch on the device and runs the batch transforms.
    fn finish(&self, items: &[(usize, ItemOut)], rng: &mut Rng, train: bool) -> crate::Result<Batch> {
        let (h, w) = (items[0].1.0, items[0].1.1);
        let mut buf = Vec::with_capacity(items.len() * 3 * (h * w) as usize);
        let mut ys = Vec::with_capacity(items.len());
        for (idx, (ih, iw, px)) in items {
            if (*ih, *iw) != (h, w) {
                bail!(
                    "cannot collate {} ({iw}x{ih}) with {} ({w}x{h}): images of one batch need one size; add an item transform (Resize)",
                    self.inner.paths[*idx].display(),
                    self.inner.paths[items[0].0].display()
                );
            }
            buf.extend_from_slice(px);
            ys.push(self.inner.targets[*idx]);
        }
        let n = items.len() as i64;
        let x = Tensor::f_from_data_size(&buf, &[n, 3, h as i64, w as i64], Kind::Uint8)?;
        let y = Tensor::from_slice(&ys);
        let (x, y) = match self.cfg.device {
            Device::Cpu => (x, y),
            d @ Device::Cuda(_) => (x.f_pin_memory(d)?.f_to_device_(d, Kind::Uint8, true, false)?, y.f_to_device_(d, Kind::Int64, true, false)?),
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
        let n = self.inner.paths.len();
        if self.cfg.drop_last { n / self.cfg.bs } else { n.div_ceil(self.cfg.bs) }
    }

    fn n_items(&self) -> usize {
        if self.cfg.drop_last { self.n_batches() * self.cfg.bs } else { self.inner.paths.len() }
    }

    fn device(&self) -> Device {
        self.cfg.device
    }

    fn batches(&self, epoch: u64) -> Box<dyn Iterator<Item = crate::Result<Batch>> + '_> {
        Box::new(EpochIter::new(self, epoch))
    }
}

/// The batches of one pass. Dropping it early stops and joins the workers.
struct EpochIter<'a> {
    dl: &'a ImageDataLoader,
    epoch: u64,
    order: Vec<usize>,
    n_batches: usize,
    next_batch: usize,
    submitted: usize,
    pending: HashMap<usize, crate::Result<ItemOut>>,
    tasks: Option<Sender<usize>>,
    results: Option<Receiver<(usize, crate::Result<ItemOut>)>>,
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
            submitted: 0,
            pending: HashMap::new(),
            tasks: None,
            results: None,
            stop: stop.clone(),
            workers: Vec::new(),
            rng: derived(dl.cfg.seed ^ 0xBA7C_4000_0000_0000, epoch),
            done: false,
        };
        if dl.cfg.workers > 0 {
            let (task_tx, task_rx) = unbounded::<usize>();
            let (res_tx, res_rx) = unbounded();
            let order = Arc::new(it.order.clone());
            for _ in 0..dl.cfg.workers {
                let (task_rx, res_tx, stop, inner, order) =
                    (task_rx.clone(), res_tx.clone(), stop.clone(), dl.inner.clone(), order.clone());
                it.workers.push(std::thread::spawn(move || {
                    while let Ok(pos) = task_rx.recv() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let idx = order[pos];
                        let r = inner.load(idx, epoch, idx as u64);
                        if res_tx.send((pos, r)).is_err() {
                            break;
                        }
                    }
                }));
            }
            it.tasks = Some(task_tx);
            it.results = Some(res_rx);
        }
        it
    }

    fn batch_range(&self, b: usize) -> std::ops::Range<usize> {
        let bs = self.dl.cfg.bs;
        b * bs..((b + 1) * bs).min(self.order.len())
    }

    /// Submits item tasks up to the end of batch `next_batch + prefetch`.
    fn submit(&mut self) {
        let Some(tx) = &self.tasks else { return };
        let last = (self.next_batch + self.dl.cfg.prefetch.max(1)).min(self.n_batches - 1);
        let end = self.batch_range(last).end;
        while self.submitted < end {
            if tx.send(self.submitted).is_err() {
                break;
            }
            self.submitted += 1;
        }
    }

    fn item(&mut self, pos: usize) -> crate::Result<ItemOut> {
        let idx = self.order[pos];
        let Some(rx) = &self.results else {
            return self.dl.inner.load(idx, self.epoch, idx as u64);
        };
        loop {
            if let Some(r) = self.pending.remove(&pos) {
                return r;
            }
            let (p, r) = rx.recv().map_err(|_| anyhow!("the data loader's worker threads stopped unexpectedly"))?;
            self.pending.insert(p, r);
        }
    }

    fn next_batch(&mut self) -> Option<crate::Result<Batch>> {
        while self.next_batch < self.n_batches {
            self.submit();
            let range = self.batch_range(self.next_batch);
            self.next_batch += 1;
            let mut items = Vec::with_capacity(range.len());
            for pos in range {
                let idx = self.order[pos];
                match self.item(pos) {
                    Ok(it) => items.push((idx, it)),
                    Err(e) if self.dl.cfg.skip_bad => {
                        self.dl.skipped.fetch_add(1, Ordering::Relaxed);
                        log::warn!("skip_bad: leaving out {}: {e:#}", self.dl.inner.paths[idx].display());
                    }
                    Err(e) => return Some(Err(e.context(format!("loading item {}", self.dl.inner.paths[idx].display())))),
                }
            }
            if !items.is_empty() {
                return Some(self.dl.finish(&items, &mut self.rng, self.dl.cfg.train));
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
