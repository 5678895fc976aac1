//! Decoding image files to 8-bit RGB (fastai `PILImage.create` + `.convert('RGB')`).

use anyhow::{Context, bail};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::Path;

/// What decoding found out about a file, for `summary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeInfo {
    /// Format detected from the content (not the extension), e.g. `Jpeg`.
    pub format: String,
    /// Colour mode stored in the file, e.g. `Rgb8`, `L16`, `Rgba8`; CMYK/YCCK JPEGs report
    /// `Rgb8` (the decoder converts them).
    pub color: String,
    /// Size as stored, (width, height) in pixels, before the EXIF orientation.
    pub stored_size: (u32, u32),
    /// The EXIF orientation applied, e.g. `NoTransforms`, `Rotate90`.
    pub orientation: String,
}

/// Decodes `path` to 8-bit RGB: format sniffed from the content (a PNG named `.jpg` is
/// read as PNG), EXIF orientation applied, every colour mode converted (grayscale and
/// palette expanded, alpha dropped without compositing as PIL's `convert('RGB')`, 16-bit
/// scaled to 8-bit, CMYK/YCCK JPEGs converted by the JPEG decoder).
///
/// Errors (all naming the file): unreadable, empty (0 bytes), content of no known image
/// format, corrupt or truncated data. A JPEG cut short is refused as PIL refuses it ("image
/// file is truncated"), where the JPEG decoder alone would fill the missing part with grey.
pub fn decode_rgb(path: &Path) -> crate::Result<RgbImage> {
    decode_with_info(path).map(|(img, _)| img)
}

/// [`decode_rgb`] plus what was found in the file.
pub fn decode_with_info(path: &Path) -> crate::Result<(RgbImage, DecodeInfo)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode_bytes(&bytes).with_context(|| format!("cannot decode {}", path.display()))
}

/// What decoding accepts, checked from the image header before any pixel buffer is
/// allocated (a 100,000 × 100,000 PNG header is refused without allocating 30 GB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most pixels (width × height) of an image; PIL's decompression-bomb error threshold
    /// (2 × `Image.MAX_IMAGE_PIXELS` = 178,956,970) by default.
    pub max_pixels: u64,
    /// Most bytes the decoder may allocate (the image crate's `Limits::max_alloc`), 2 GiB by default.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 178_956_970, max_alloc: 2 << 30 }
    }
}

/// Decodes an encoded image held in memory; see [`decode_rgb`].
pub fn decode_bytes(bytes: &[u8]) -> crate::Result<(RgbImage, DecodeInfo)> {
    decode_bytes_limited(bytes, &DecodeLimits::default())
}

/// [`decode_bytes`] with explicit [`DecodeLimits`]. Errors as [`decode_rgb`], plus an
/// image larger than the limits ("W x H = N pixels, more than the limit of M"), refused
/// from its header.
pub fn decode_bytes_limited(bytes: &[u8], limits: &DecodeLimits) -> crate::Result<(RgbImage, DecodeInfo)> {
    if bytes.is_empty() {
        bail!("the file is empty (0 bytes)");
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().context("cannot read the header")?;
    let Some(format) = reader.format() else {
        bail!("not an image: the content matches no known image format");
    };
    if format == image::ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
    }
    let mut lim = image::Limits::default();
    lim.max_alloc = Some(limits.max_alloc);
    reader.limits(lim);
    let mut dec = reader.into_decoder().with_context(|| format!("bad {format:?} header"))?;
    let stored_size = dec.dimensions();
    let pixels = stored_size.0 as u64 * stored_size.1 as u64;
    if pixels > limits.max_pixels {
        bail!(
            "the image is {} x {} = {pixels} pixels, more than the limit of {} (a decompression bomb?)",
            stored_size.0, stored_size.1, limits.max_pixels
        );
    }
    if pixels == 0 {
        bail!("the image is {} x {} pixels: nothing to predict", stored_size.0, stored_size.1);
    }
    let color = format!("{:?}", dec.original_color_type());
    let orientation = dec.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(dec).with_context(|| format!("corrupt or truncated {format:?} data"))?;
    img.apply_orientation(orientation);
    let rgb = match img {
        DynamicImage::ImageRgb8(i) => i,
        other => other.into_rgb8(),
    };
    let info = DecodeInfo { format: format!("{format:?}"), color, stored_size, orientation: format!("{orientation:?}") };
    Ok((rgb, info))
}

/// Refuses a JPEG with no end-of-image marker (FF D9) after its last start-of-scan marker
/// (FF DA): the file was cut short. Entropy-coded data cannot contain FF D9 (an FF byte in
/// it is followed by 00 or a restart marker D0–D7), so the test does not depend on the image
/// content; an EOI of an embedded EXIF thumbnail comes before the main scans and does not
/// count.
fn check_jpeg_complete(bytes: &[u8]) -> crate::Result<()> {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let complete = last_sos.is_some_and(|i| bytes[i + 2..].windows(2).any(|w| w == [0xFF, 0xD9]));
    if !complete {
        bail!("truncated JPEG: the file ends before the end-of-image marker ({} bytes; cut short while copying or downloading?)", bytes.len());
    }
    Ok(())
}
