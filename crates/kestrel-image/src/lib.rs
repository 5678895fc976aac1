//! # kestrel-image
//!
//! The part of kestrel's preprocessing that runs on the CPU before any tensor exists, with
//! no libtorch: decoding photos to 8-bit RGB with the EXIF orientation applied
//! ([`decode`]), fastai's presizing item transforms ([`resize`]), finding image files
//! ([`files`]), loading them on worker threads in ordered batches ([`batches`]), and the
//! rule for answering `unknown` ([`answer`]). `kestrel` (training, `predict`) and `kestrel-serve` (ONNX inference) both
//! use this crate, so a deployed model sees exactly the pixels that validation saw.

pub mod answer;
pub mod batches;
pub mod decode;
pub mod files;
pub mod resize;

/// The crate's result type: an [`anyhow::Error`] whose message says what is wrong and where.
pub type Result<T> = anyhow::Result<T>;

/// Interleaved RGB (H, W, 3) → planar (3, H, W), the layout of a model input; `n_px` =
/// H·W. (kestrel's collation and kestrel-serve's ONNX input both use it.)
pub fn hwc_to_chw(src: &[u8], n_px: usize) -> Vec<u8> {
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
