//! The data side (fastai `DataBlock` → `DataLoaders`): items, labels, splits, decoding,
//! presizing item transforms and the batched, prefetching loaders.

pub mod block;
pub mod check;
pub use kestrel_image::decode;
pub mod items;
pub mod label;
pub mod layout;
pub mod loader;
pub use kestrel_image::resize;
pub mod show;
pub mod split;
pub mod summary;
mod tensor_loader;
mod vocab;

pub use block::{DataBlock, Datasets, ImageDataLoaders, Source};
pub use items::{CsvTable, ImageFiles, Items, get_image_files};
pub use label::{Labeller, PETS_PATTERN};
pub use loader::{ImageDataLoader, LoaderConfig};
pub use resize::{ItemTfm, PadMode, ResizeMethod};
pub use split::Splitter;
pub use tensor_loader::TensorLoader;
pub use vocab::CategoryMap;
use std::sync::Arc;
use tch::{Device, Tensor};

/// One collated batch, on the loader's device.
#[derive(Debug)]
pub struct Batch {
    /// Images, shape (N, 3, H, W): `u8` 0..=255 straight from the item pipeline, or `f32`
    /// normalised once the batch transforms ran.
    pub x: Tensor,
    /// Class indices into the vocabulary, `i64`, shape (N); for a multi-label loader
    /// one-hot `f32` (N, C) (fastai `MultiCategoryBlock`'s `EncodedMultiCategorize`).
    pub y: Tensor,
}

/// Anything that yields batches epoch by epoch — what a `Learner` trains and validates
/// on (fastai `DataLoader`'s iteration protocol). The image loaders of this module
/// implement it; tests implement it over in-memory tensors.
pub trait BatchSource: Send + Sync {
    /// Number of batches one pass yields (with `drop_last`, the incomplete one is not counted).
    fn n_batches(&self) -> usize;
    /// Number of items one pass visits.
    fn n_items(&self) -> usize;
    /// The device batches are placed on.
    fn device(&self) -> Device;
    /// The batches of pass `epoch` (0-based): the order depends only on the loader's seed
    /// and `epoch`, so a seeded run and a resumed run see the same batches.
    fn batches(&self, epoch: u64) -> Box<dyn Iterator<Item = crate::Result<Batch>> + '_>;
    /// The items (indices in dataset order) left out so far because they could not be
    /// loaded (`skip_bad`), ascending; none by default. Whoever lines predictions up with
    /// the items drops these.
    fn skipped_items(&self) -> Vec<usize> {
        Vec::new()
    }
}

/// Training and validation loaders plus the vocabulary (fastai `DataLoaders`).
#[derive(Clone)]
pub struct DataLoaders {
    /// Shuffled every epoch, `drop_last`, batch transforms with augmentation.
    pub train: Arc<dyn BatchSource>,
    /// In order, deterministic batch transforms.
    pub valid: Arc<dyn BatchSource>,
    /// Class names; targets index into it.
    pub vocab: CategoryMap,
}
