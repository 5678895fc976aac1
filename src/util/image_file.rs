//! Writing the images kestrel draws (plots, batches, interpretation grids).

use anyhow::{Context, bail};
use image::{ImageFormat, RgbImage};
use std::path::Path;

/// Writes `img` to `path` atomically, in the format its extension names: `.png` (or no
/// extension) as PNG, `.jpg`/`.jpeg` as JPEG (quality 90).
///
/// Errors: another extension (named: the file would hold PNG bytes under a misleading
/// name); encoding or writing fails, naming `path`.
pub fn write_image(path: &Path, img: &RgbImage) -> crate::Result<()> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    let format = match ext.as_deref() {
        None | Some("png") => ImageFormat::Png,
        Some("jpg" | "jpeg") => ImageFormat::Jpeg,
        Some(e) => bail!("cannot write {}: kestrel writes its images as .png or .jpg, not .{e}", path.display()),
    };
    let mut bytes = Vec::new();
    if format == ImageFormat::Jpeg {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(img)
            .with_context(|| format!("cannot encode {}", path.display()))?;
    } else {
        img.write_to(&mut std::io::Cursor::new(&mut bytes), format).with_context(|| format!("cannot encode {}", path.display()))?;
    }
    crate::util::atomic::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_names_the_format() {
        let d = tempfile::tempdir().unwrap();
        let img = RgbImage::from_pixel(4, 3, image::Rgb([200, 10, 10]));
        for (name, want) in [("a.png", ImageFormat::Png), ("b.JPG", ImageFormat::Jpeg), ("c", ImageFormat::Png)] {
            write_image(&d.path().join(name), &img).unwrap();
            let bytes = std::fs::read(d.path().join(name)).unwrap();
            assert_eq!(image::guess_format(&bytes).unwrap(), want, "{name}");
        }
        let e = write_image(&d.path().join("d.gif"), &img).unwrap_err().to_string();
        assert!(e.contains("d.gif") && e.contains(".png or .jpg"), "{e}");
    }
}
