//! Decoding image files to 8-bit RGB (fastai `PILImage.create` + `.convert('RGB')`).

use anyhow::{Context, bail};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Limits on what an image file may make the decoder allocate, checked against the size the
/// header declares before any pixel is decoded (a 74-byte PNG may declare 100,000 × 100,000
/// pixels, 30 GB of RGB).
///
/// image 0.25's `into_decoder()` + `DynamicImage::from_decoder` path does not reserve its
/// `Limits::max_alloc`, so these checks are kestrel's own ([`check_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width × height accepted; 0 for no limit. Default 178,956,970: the size at
    /// which PIL raises `DecompressionBombError` (twice `Image.MAX_IMAGE_PIXELS`), so every
    /// image fastai opens opens here too, a 100-megapixel photo included.
    pub max_pixels: u64,
    /// Largest ratio of decoded bytes (as stored: width × height × bytes per pixel) to the
    /// file's size, checked only when the decoded image is above 8 MiB; 0 for no limit.
    /// Default 250: photos compress 2–20×, while a deflate bomb (a 420 KB PNG of one
    /// colour that inflates to 432 MB) reaches deflate's maximum of about 1000×, and a
    /// 2 KB JPEG found by fuzzing declares 225 × 65,324 pixels (42 MiB, over a second to
    /// decode).
    pub max_ratio: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits { max_pixels: DEFAULT_MAX_PIXELS, max_ratio: DEFAULT_MAX_RATIO }
    }
}

/// Default of [`ImageLimits::max_pixels`] (PIL's `DecompressionBombError` threshold).
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;
/// Default of [`ImageLimits::max_ratio`].
pub const DEFAULT_MAX_RATIO: u64 = 250;
/// Decoded size above which [`ImageLimits::max_ratio`] is checked (8 MiB: smaller images
/// decode in milliseconds whatever their file size).
const RATIO_CHECKED_ABOVE: u64 = 8 << 20;

static MAX_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_PIXELS);
static MAX_RATIO: AtomicU64 = AtomicU64::new(DEFAULT_MAX_RATIO);

/// Sets the limits every later decode in this process uses (the CLI's
/// `--max-image-pixels` and `--max-image-ratio`, read by training, `check-data` and
/// `predict` alike).
pub fn set_limits(l: ImageLimits) {
    MAX_PIXELS.store(l.max_pixels, Ordering::Relaxed);
    MAX_RATIO.store(l.max_ratio, Ordering::Relaxed);
}

/// The command-line options of the process-wide [`ImageLimits`], the same in `kestrel` and
/// `kestrel-serve` (flatten into a clap parser, then [`ImageLimitArgs::apply`]).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ImageLimitArgs {
    /// Refuse image files that declare more pixels (width × height) than this, before
    /// decoding them; 0 for no limit. The default is PIL's `DecompressionBombError`
    /// threshold, which admits 100-megapixel photos.
    #[arg(long, global = true, value_name = "N", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_image_pixels: u64,
    /// Refuse image files that would decode to more than this many bytes per byte of file
    /// (checked above 8 MiB decoded: a decompression bomb); 0 for no limit.
    #[arg(long, global = true, value_name = "RATIO", default_value_t = DEFAULT_MAX_RATIO)]
    pub max_image_ratio: u64,
}

impl ImageLimitArgs {
    /// Makes these the limits of every later decode in this process ([`set_limits`]).
    pub fn apply(&self) {
        set_limits(ImageLimits { max_pixels: self.max_image_pixels, max_ratio: self.max_image_ratio });
    }
}

/// The limits in force (see [`set_limits`]).
pub fn limits() -> ImageLimits {
    ImageLimits { max_pixels: MAX_PIXELS.load(Ordering::Relaxed), max_ratio: MAX_RATIO.load(Ordering::Relaxed) }
}

/// Checks a header's declared `width` × `height` and decoded size `decoded_bytes` against
/// `limits`, for a file of `file_bytes` bytes. Self-contained (no decoder needed) so that
/// a header can be judged before anything is allocated for its pixels.
///
/// Errors: more pixels than `max_pixels`; a decoded size above 8 MiB that is more than
/// `max_ratio` times the file (a decompression bomb). The message names both numbers and
/// the option that changes the limit.
pub fn check_limits(width: u32, height: u32, decoded_bytes: u64, file_bytes: u64, limits: ImageLimits) -> crate::Result<()> {
    let pixels = width as u64 * height as u64;
    if limits.max_pixels > 0 && pixels > limits.max_pixels {
        bail!(
            "the image declares {width} × {height} = {pixels} pixels, more than the limit of {} \
             (a decompression bomb, or raise --max-image-pixels)",
            limits.max_pixels
        );
    }
    if limits.max_ratio > 0 && decoded_bytes > RATIO_CHECKED_ABOVE && decoded_bytes > limits.max_ratio.saturating_mul(file_bytes) {
        bail!(
            "the image ({width} × {height}) would decode to {decoded_bytes} bytes from a file of {file_bytes} bytes, \
             a ratio above the limit of {} (a decompression bomb, or raise --max-image-ratio)",
            limits.max_ratio
        );
    }
    Ok(())
}

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
/// format, corrupt or truncated data, a size above the [`ImageLimits`] in force (checked
/// from the header, before decoding). A JPEG cut short is refused as PIL refuses it ("image
/// file is truncated"), where the JPEG decoder alone would fill the missing part with grey.
pub fn decode_rgb(path: &Path) -> crate::Result<RgbImage> {
    decode_with_info(path).map(|(img, _)| img)
}

/// [`decode_rgb`] plus what was found in the file.
pub fn decode_with_info(path: &Path) -> crate::Result<(RgbImage, DecodeInfo)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode_bytes(&bytes).with_context(|| format!("cannot decode {}", path.display()))
}

/// The codec's working buffers may hold this many times the decoded image's bytes (RGBA
/// frames, colour planes, rows) plus [`CODEC_SLACK`]; more is refused as a lie of the header.
const CODEC_BUFFERS: u64 = 4;
/// Bytes any codec may use whatever the image's size (tables, zlib state, small frames).
const CODEC_SLACK: u64 = 64 << 20;

/// What decoding accepts, checked from the image header before any pixel buffer is
/// allocated (a 100,000 × 100,000 PNG header is refused without allocating 30 GB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most pixels (width × height) of an image; PIL's decompression-bomb error threshold
    /// (2 × `Image.MAX_IMAGE_PIXELS` = 178,956,970) by default.
    pub max_pixels: u64,
    /// Most bytes the codec may allocate for its own buffers (the image crate's
    /// `Limits::max_alloc`), 2 GiB by default; lowered for each image to 4 × its decoded
    /// size + 64 MiB, so that a header cannot announce a small image and then make the
    /// codec allocate a large one.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 178_956_970, max_alloc: 2 << 30 }
    }
}

/// Decodes an encoded image held in memory; see [`decode_rgb`].
pub fn decode_bytes(bytes: &[u8]) -> crate::Result<(RgbImage, DecodeInfo)> {
    // Only the process-wide limits ([`set_limits`], the CLI's --max-image-pixels) apply.
    decode_bytes_limited(bytes, &DecodeLimits { max_pixels: u64::MAX, ..DecodeLimits::default() })
}

/// [`decode_bytes`] with explicit [`DecodeLimits`] on top of the process-wide
/// [`ImageLimits`] (checked first). Errors as [`decode_rgb`], plus an image larger than
/// either limit ("W × H = N pixels, more than the limit of M"), refused from its header,
/// and codec buffers beyond [`DecodeLimits::max_alloc`] (a frame larger than the image).
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
    check_limits(stored_size.0, stored_size.1, dec.total_bytes(), bytes.len() as u64, crate::decode::limits())?;
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
    // The codec's own buffers get a budget from the declared size: the header can lie about
    // the rest. A 463-byte GIF found by fuzzing declares a 13 x 9 screen, then an
    // 18,770 x 16,674 frame that the GIF codec would allocate (1.25 GB).
    let mut lim = image::Limits::default();
    lim.max_alloc = Some(limits.max_alloc.min(dec.total_bytes().saturating_mul(CODEC_BUFFERS).saturating_add(CODEC_SLACK)));
    dec.set_limits(lim).with_context(|| format!("bad {format:?} header"))?;
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
