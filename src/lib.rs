//! # kestrel
//!
//! fastai's vision workflow — DataBlock, presizing, GPU batch augmentation, transfer
//! learning of pretrained CNNs, `lr_find`, `fine_tune`, interpretation and export — as a
//! Rust library on libtorch (through the `tch` crate) and the `kestrel` command.
//!
//! Conventions used by every module:
//! - Image batches are tensors of shape (N, C, H, W), C = 3 (RGB). Batches that leave
//!   the [`data`] pipeline are `u8` in 0..=255; after the batch transforms
//!   ([`transforms`]) they are `f32`, normalised with the model's statistics.
//! - Targets are `i64` class indices of shape (N), indexing [`data::CategoryMap`].
//! - Every random draw comes from a seeded ChaCha generator ([`util::rng`]), so a
//!   seeded run is repeatable on every platform.
//! - Errors are [`anyhow::Error`]s whose message names the file, line or value at fault.
//!
//! Where this crate follows fastai, the item's documentation names the fastai function.

pub mod callbacks;
pub mod cli;
pub mod data;
pub mod distributed;
pub mod export;
pub mod interpret;
pub mod learner;
pub mod metrics;
pub mod models;
pub mod report;
pub mod transforms;
pub mod util;

/// The crate's result type: an [`anyhow::Error`] whose message says what is wrong and where.
pub type Result<T> = anyhow::Result<T>;
