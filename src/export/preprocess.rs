//! Item-level preprocessing of photos for inference: the data pipeline's decoding and
//! presizing `Resize`, as the model file describes it, and collation.

use super::meta::InferenceTransforms;
use crate::data::loader::{collate_u8, hwc_to_chw};
use crate::data::ItemTfm;
use anyhow::bail;
use image::RgbImage;
use tch::Tensor;

/// The presizing item transform of `t`: fastai `Resize(presize, method, pad_mode)`.
///
/// Errors: an unknown resize method or padding mode, naming it.
pub fn item_tfm(t: &InferenceTransforms) -> crate::Result<ItemTfm> {
    ItemTfm::presize(t.presize, &t.resize_method, &t.pad_mode)
}

/// Stacks same-sized RGB images into a `u8` tensor (N, 3, H, W) on the CPU, as the data
/// loader collates.
///
/// Errors: no images, or images of different sizes.
pub fn to_batch(imgs: &[RgbImage]) -> crate::Result<Tensor> {
    let Some(first) = imgs.first() else { bail!("no images to batch") };
    let (w, h) = first.dimensions();
    if let Some(other) = imgs.iter().find(|i| i.dimensions() != (w, h)) {
        bail!("images of different sizes in one batch: {:?} and {:?}", (w, h), other.dimensions());
    }
    let planar: Vec<Vec<u8>> = imgs.iter().map(|i| hwc_to_chw(i.as_raw(), (w * h) as usize)).collect();
    Ok(collate_u8(planar.iter().map(Vec::as_slice), imgs.len(), h, w))
}
