//! Inference with an exported model (fastai `load_learner` + `Learner.predict`, and
//! `Learner.tta` over files).

use super::build::load_model;
use super::meta::{Activation, ModelMeta};
use super::preprocess::{item_tfm, to_batch};
use crate::data::ItemTfm;
use crate::data::decode::decode_rgb;
use crate::models::Model;
use crate::transforms::{BatchTfms, BatchTransform, Normalize};
use crate::util::rng::{Rng, derived, seeded};
use anyhow::bail;
use image::RgbImage;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One photo's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The most probable class's name.
    pub label: String,
    /// Its index in the vocabulary.
    pub index: usize,
    /// Probabilities of every class, vocabulary order: softmax (sum 1), or for a
    /// multi-label model one sigmoid per label (each in [0, 1]).
    pub probs: Vec<f32>,
    /// Multi-label models: the indices of every label whose probability is above the
    /// model's threshold, vocabulary order; empty = predicted as none. `None` for
    /// single-label models.
    pub labels: Option<Vec<usize>>,
}

impl Prediction {
    /// The prediction of `probs` with the vocabulary `vocab`; with `thresh` (multi-label)
    /// every label above it, and `label` is those labels joined by spaces, or `none`.
    fn from_probs(probs: Vec<f32>, vocab: &[String], thresh: Option<f64>) -> Self {
        let index = argmax(&probs);
        match thresh {
            Some(t) => {
                let above = kestrel_image::answer::labels_above(&probs, t);
                Self { label: kestrel_image::answer::multi_label_name(&above, vocab), index, probs, labels: Some(above) }
            }
            None => Self { label: vocab[index].clone(), index, probs, labels: None },
        }
    }

    /// The `k` most probable classes as (index, probability), most probable first (ties by index).
    pub fn top(&self, k: usize) -> Vec<(usize, f32)> {
        let mut idx: Vec<usize> = (0..self.probs.len()).collect();
        idx.sort_by(|&a, &b| self.probs[b].total_cmp(&self.probs[a]).then(a.cmp(&b)));
        idx.into_iter().take(k).map(|i| (i, self.probs[i])).collect()
    }
}

pub(crate) fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

/// Test-time augmentation settings (fastai `Learner.tta` arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TtaOptions {
    /// Number of augmented passes (fastai `n=4`).
    pub n: usize,
    /// Weight of the plain prediction: result = `(1 − beta)·mean(augmented) + beta·plain`
    /// (fastai `beta=0.25`, `torch.lerp(aug, plain, beta)`).
    pub beta: f32,
    /// Take the element-wise maximum of the augmented passes and the plain one instead (fastai `use_max`).
    pub use_max: bool,
    /// Seed of the augmentations' random draws.
    pub seed: u64,
}

impl Default for TtaOptions {
    fn default() -> Self {
        Self { n: 4, beta: 0.25, use_max: false, seed: 42 }
    }
}

/// An exported model ready for inference, with its validation-time preprocessing.
pub struct Predictor {
    model: Box<dyn Model>,
    meta: ModelMeta,
    valid: BatchTfms,
    presize: ItemTfm,
    device: Device,
}

impl Predictor {
    /// Loads an exported model onto `device` (CPU or CUDA regardless of where it was
    /// trained; fastai `load_learner`).
    ///
    /// Errors: as [`super::load_model`] (a [`super::ModelFileError`] for files that are
    /// truncated, corrupt, a checkpoint, of a newer version or not kestrel models).
    pub fn load(path: &Path, device: Device) -> crate::Result<Self> {
        let loaded = load_model(path, device)?;
        Self::new(loaded.model, loaded.meta)
    }

    /// A predictor over an in-memory `model` (e.g. a Learner's) described by `meta`,
    /// on the model's device — what `load` gives for the exported file.
    ///
    /// Errors: a vocabulary whose size differs from `meta.card.arch.n_out`; a calibration
    /// temperature that is not a positive number; transforms the batch stage refuses (bad statistics or augmentation parameters).
    pub fn new(model: Box<dyn Model>, meta: ModelMeta) -> crate::Result<Self> {
        let card = &meta.card;
        if card.vocab.len() != card.arch.n_out {
            bail!("the vocabulary has {} classes but the model has {} outputs", card.vocab.len(), card.arch.n_out);
        }
        if let Some(c) = &card.calibration
            && !(c.temperature.is_finite() && c.temperature > 0.0)
        {
            bail!("the model file's calibration temperature {} is not a positive number", c.temperature);
        }
        let device = model.var_store().device();
        let t = &card.transforms;
        let aug = t.augment.clone().map(|a| a.with_size(t.size as i64));
        let valid = BatchTfms::new(aug, t.size as i64, Normalize::from_stats(t.mean, t.std)?)?;
        let presize = item_tfm(t)?;
        Ok(Self { model, meta, valid, presize, device })
    }

    /// The training batch transform recorded in the model file (augmentation, resize,
    /// normalisation), for [`Predictor::tta_files`].
    ///
    /// Errors: the file records no augmentation.
    pub fn augmentation(&self) -> crate::Result<BatchTfms> {
        if self.valid.aug().is_none() {
            bail!("the model file records no training augmentation, which test-time augmentation needs");
        }
        Ok(self.valid.clone())
    }

    /// The model file's metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// The multi-label decision threshold (sigmoid models; 0.5 when the file gives
    /// none), `None` for softmax models.
    pub fn thresh(&self) -> Option<f64> {
        let o = &self.meta.card.output;
        (o.activation == Activation::Sigmoid).then(|| o.thresh.unwrap_or(0.5))
    }

    /// Class names, index order.
    pub fn vocab(&self) -> &[String] {
        &self.meta.card.vocab
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The item transform of validation: `Resize(presize, method)` with a centre crop.
    ///
    /// Errors: an unknown resize method in the metadata.
    pub fn presize(&self, img: &RgbImage) -> crate::Result<RgbImage> {
        self.presize.apply(img, false, &mut seeded(0))
    }

    /// Probabilities (N, C) `f32` on the CPU for a presized `u8` batch (N, 3, H, W): the
    /// validation batch transform, the model in evaluation mode, softmax (or the sigmoid
    /// of a multi-label model) — of the logits divided by the model file's temperature when
    /// it has one ([`super::Calibration`]).
    ///
    /// Errors: a batch the transform or the model refuses.
    pub fn predict_batch(&self, x: &Tensor) -> crate::Result<Tensor> {
        self.forward(x, &self.valid, false, &mut seeded(0))
    }

    /// Logits (N, C) `f32` on the CPU for a presized `u8` batch (N, 3, H, W): what
    /// [`Predictor::predict_batch`] computes before the softmax (the ONNX export's
    /// `logits` output computes the same).
    ///
    /// Errors: as [`Predictor::predict_batch`].
    pub fn logits_batch(&self, x: &Tensor) -> crate::Result<Tensor> {
        self.logits(x, &self.valid, false, &mut seeded(0))
    }

    fn logits(&self, x: &Tensor, tfm: &dyn BatchTransform, train: bool, rng: &mut Rng) -> crate::Result<Tensor> {
        tch::no_grad(|| {
            let x = tfm.apply(&x.to_device(self.device), train, rng)?;
            Ok(self.model_logits(&x))
        })
    }

    /// The model's logits (N, C) `f32` on the CPU for an already transformed batch.
    fn model_logits(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.model.forward_t(x, false).to_kind(Kind::Float).to_device(Device::Cpu))
    }

    fn forward(&self, x: &Tensor, tfm: &dyn BatchTransform, train: bool, rng: &mut Rng) -> crate::Result<Tensor> {
        Ok(self.probs(self.logits(x, tfm, train, rng)?))
    }

    /// Probabilities from logits: divided by the calibration temperature when the model
    /// file has one, then softmax (single-label) or sigmoid (multi-label).
    fn probs(&self, logits: Tensor) -> Tensor {
        let logits = match &self.meta.card.calibration {
            Some(c) => logits / c.temperature,
            None => logits,
        };
        match self.meta.card.output.activation {
            Activation::Softmax => logits.softmax(-1, Kind::Float),
            Activation::Sigmoid => logits.sigmoid(),
        }
    }

    /// Predicts one decoded photo (fastai `Learner.predict`): presize, validation batch
    /// transform, model, softmax.
    ///
    /// Errors: as [`Predictor::predict_batch`].
    pub fn predict_image(&self, img: &RgbImage) -> crate::Result<Prediction> {
        let x = to_batch(&[self.presize(img)?])?;
        let probs = Vec::<f32>::try_from(self.predict_batch(&x)?.flatten(0, -1))?;
        Ok(Prediction::from_probs(probs, self.vocab(), self.thresh()))
    }

    /// Predicts the photo at `path`. Errors: an undecodable file (naming it), or as
    /// [`Predictor::predict_image`].
    pub fn predict_file(&self, path: &Path) -> crate::Result<Prediction> {
        self.predict_image(&decode_rgb(path)?)
    }

    /// Predicts many photos in batches of `bs`, decoding and presizing on `workers`
    /// threads while the model runs. Returns one result per path, in order: a file that
    /// cannot be decoded gets its error (naming it) and the others are still predicted.
    pub fn predict_files(&self, paths: &[PathBuf], bs: usize, workers: usize) -> Vec<crate::Result<Prediction>> {
        self.run_files(paths, bs, workers, |x| {
            let p = self.predict_batch(x)?;
            Ok(p)
        })
    }

    /// Test-time augmentation over files (fastai `Learner.tta`): `opts.n` passes with the
    /// training augmentation `aug` (called with `train = true`) on the items presized as
    /// in training (`Resize` crop at a random position), averaged (or maximum with
    /// `use_max`), then blended with the plain validation prediction:
    /// `(1 − beta)·aug + beta·plain`. Results per path as [`Predictor::predict_files`].
    /// The random draws are seeded per photo (by `opts.seed` and the photo's pixels), so a
    /// photo gets the same answer alone or in any batch.
    pub fn tta_files(
        &self,
        paths: &[PathBuf],
        aug: &dyn BatchTransform,
        opts: &TtaOptions,
        bs: usize,
        workers: usize,
    ) -> Vec<crate::Result<Prediction>> {
        self.run_decoded(paths, bs, workers, |imgs| {
            let plain = self.predict_batch(&to_batch(&imgs.iter().map(|i| self.presize(i)).collect::<crate::Result<Vec<_>>>()?)?)?;
            // Each photo draws its augmentations from its own generator, keyed by its
            // pixels and the pass: its answer does not depend on the other photos of the
            // batch, the batch size or the order of the paths.
            let keys: Vec<u64> = imgs.iter().map(photo_key).collect();
            let mut augs = Vec::with_capacity(opts.n);
            for pass in 0..opts.n {
                let xs = imgs
                    .iter()
                    .zip(&keys)
                    .map(|(img, &key)| {
                        let mut rng = derived(opts.seed ^ key, pass as u64);
                        let item = self.presize.apply(img, true, &mut rng)?;
                        tch::no_grad(|| aug.apply(&to_batch(&[item])?.to_device(self.device), true, &mut rng))
                    })
                    .collect::<crate::Result<Vec<Tensor>>>()?;
                augs.push(self.probs(self.model_logits(&Tensor::cat(&xs, 0))));
            }
            Ok(tta_combine(&plain, &augs, opts))
        })
    }

    fn run_files(
        &self,
        paths: &[PathBuf],
        bs: usize,
        workers: usize,
        mut run: impl FnMut(&Tensor) -> crate::Result<Tensor>,
    ) -> Vec<crate::Result<Prediction>> {
        let tfm = self.presize.clone();
        let load = move |p: &Path| tfm.apply(&decode_rgb(p)?, false, &mut seeded(0));
        self.pipeline(paths, bs, workers, &load, &mut |items| run(&to_batch(items)?))
    }

    fn run_decoded(
        &self,
        paths: &[PathBuf],
        bs: usize,
        workers: usize,
        mut run: impl FnMut(&[RgbImage]) -> crate::Result<Tensor>,
    ) -> Vec<crate::Result<Prediction>> {
        self.pipeline(paths, bs, workers, &decode_rgb, &mut run)
    }

    /// Loads items on worker threads and runs the model on the calling thread batch by
    /// batch, in path order ([`kestrel_image::batches::map_files_in_batches`]).
    fn pipeline(
        &self,
        paths: &[PathBuf],
        bs: usize,
        workers: usize,
        load: &(dyn Fn(&Path) -> crate::Result<RgbImage> + Sync),
        run: &mut dyn FnMut(&[RgbImage]) -> crate::Result<Tensor>,
    ) -> Vec<crate::Result<Prediction>> {
        kestrel_image::batches::map_files_in_batches(paths, bs, workers, load, |items| {
            let flat = Vec::<f32>::try_from(run(&items)?.flatten(0, -1))?;
            let c = flat.len() / items.len().max(1);
            Ok(flat.chunks_exact(c.max(1)).map(|p| Prediction::from_probs(p.to_vec(), self.vocab(), self.thresh())).collect())
        })
    }
}

/// A key of a decoded photo for seeding its TTA draws: the first 8 bytes of the SHA-256
/// of its size and pixels.
fn photo_key(img: &RgbImage) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(img.width().to_le_bytes());
    h.update(img.height().to_le_bytes());
    h.update(img.as_raw());
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

/// fastai `Learner.tta`'s combination of the plain probabilities (N, C) and the augmented
/// passes' (each (N, C)): `lerp(mean(augs), plain, beta)`, or the element-wise maximum of
/// all with `use_max`. With no augmented pass, the plain probabilities.
pub fn tta_combine(plain: &Tensor, augs: &[Tensor], opts: &TtaOptions) -> Tensor {
    if augs.is_empty() {
        return plain.shallow_clone();
    }
    let stacked = Tensor::stack(augs, 0);
    if opts.use_max {
        let aug = stacked.amax([0i64].as_slice(), false);
        return aug.maximum(plain);
    }
    let aug = stacked.mean_dim([0i64].as_slice(), false, Kind::Float);
    aug.lerp(plain, opts.beta as f64)
}

pub use kestrel_image::files::expand_image_paths;
