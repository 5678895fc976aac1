//! Writes the seed corpus of the fuzz targets in `fuzz/` (run by `scripts/fuzz.sh`): real
//! files of every kind kestrel parses — the weight fixtures, a model file written by
//! `export`, small images in each format plus a few pet photos, CSVs and label patterns,
//! gzipped tars as `untar_data` downloads them, and kestrel-serve requests.
//!
//! Run: `cargo run --example fuzz_seeds -- CORPUS_DIR` (writes `CORPUS_DIR/<target>/…`).

use image::{ImageEncoder, Rgb, RgbImage};
use kestrel::export::{ArchSpec, InferenceTransforms, ModelCard, TrainingSummary, export};
use kestrel::models::SimpleCnn;
use std::path::{Path, PathBuf};

fn main() -> kestrel::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: fuzz_seeds CORPUS_DIR"))?);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = |t: &str| -> kestrel::Result<PathBuf> {
        let d = out.join(t);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    let weights = root.join("tests/fixtures/weights");
    for (target, files) in [
        ("pickle", &["tiny_legacy.pth"][..]),
        ("zip_pth", &["tiny.pth", "wrapped.pth", "evil.pth", "module.pth"][..]),
        ("model_file", &["tiny.safetensors"][..]),
    ] {
        for f in files {
            std::fs::copy(weights.join(f), dir(target)?.join(f))?;
        }
    }
    // The pickle VM also sees the zip files' data.pkl programs.
    for f in ["tiny.pth", "wrapped.pth", "evil.pth", "module.pth"] {
        let bytes = std::fs::read(weights.join(f))?;
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes))?;
        let name = (0..z.len()).filter_map(|i| z.name_for_index(i).map(str::to_owned)).find(|n| n.ends_with("data.pkl"));
        if let Some(name) = name {
            let mut pkl = Vec::new();
            std::io::Read::read_to_end(&mut z.by_name(&name)?, &mut pkl)?;
            std::fs::write(dir("pickle")?.join(format!("{f}.pkl")), pkl)?;
        }
    }

    // A model file as fine-tune writes it (a tiny network).
    let model = SimpleCnn::new(2, 4, 3, tch::Device::Cpu);
    let card = ModelCard {
        arch: ArchSpec { name: "simple_cnn".into(), n_out: 3, hyper: serde_json::Value::Null },
        vocab: vec!["cat".into(), "dog".into(), "bird".into()],
        transforms: InferenceTransforms {
            presize: 40, size: 32, resize_method: "crop".into(), pad_mode: "reflection".into(),
            mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], augment: None,
        },
        training: Some(TrainingSummary { epochs: 1, metrics: [("error_rate".to_string(), 0.25)].into(), date: "2026-12-01T00:00:00Z".into(),
                                         precision: Some("fp32".into()) }),
        output: Default::default(),
        calibration: None,
    };
    export(&dir("model_file")?.join("model.safetensors"), &model, &card)?;

    // Images: each format kestrel reads, small, plus the CMYK fixture and a few photos.
    let img = RgbImage::from_fn(13, 9, |x, y| Rgb([(x * 19) as u8, (y * 27) as u8, 128]));
    let d = dir("image")?;
    for (name, fmt) in [
        ("a.png", image::ImageFormat::Png), ("a.jpg", image::ImageFormat::Jpeg), ("a.gif", image::ImageFormat::Gif),
        ("a.bmp", image::ImageFormat::Bmp), ("a.tif", image::ImageFormat::Tiff), ("a.webp", image::ImageFormat::WebP),
    ] {
        img.save_with_format(d.join(name), fmt)?;
    }
    let gray = image::GrayImage::from_fn(7, 5, |x, y| image::Luma([(x * y * 9) as u8]));
    let mut png16 = Vec::new();
    let px: Vec<u8> = (0..7 * 5 * 2).map(|i| (i * 37) as u8).collect();
    image::codecs::png::PngEncoder::new(&mut png16).write_image(&px, 7, 5, image::ExtendedColorType::L16)?;
    std::fs::write(d.join("l16.png"), png16)?;
    gray.save(d.join("gray.png"))?;
    std::fs::copy(root.join("tests/fixtures/data/cmyk.jpg"), d.join("cmyk.jpg"))?;
    let sample = kestrel::util::testdata::pets_sample();
    if let Some(s) = &sample {
        for f in ["miniature_pinscher_124.jpg", "american_pit_bull_terrier_156.jpg", "pug_166.jpg"] {
            let p = s.join("images").join(f);
            if p.is_file() {
                std::fs::copy(&p, d.join(f))?;
            }
        }
    }

    // Labels: a regex line then file names; and CSVs (the pets labels.csv's first rows).
    let d = dir("labels")?;
    std::fs::write(d.join("regex.txt"), "^(.+)_\\d+\\.jpg$\nAbyssinian_12.jpg\ngreat_pyrenees_3.jpg\nnot-a-match.png\n")?;
    std::fs::write(d.join("folder.txt"), "([^/]+)/[^/]+$\ncats/a.jpg\ndogs/b.jpg\n")?;
    std::fs::write(d.join("quoted.csv"), "fname,labels,is_valid\n\"a, b.jpg\",\"cat dog\",True\nb.jpg,,False\n")?;
    if let Some(s) = &sample {
        let csv = std::fs::read_to_string(s.join("labels.csv"))?;
        std::fs::write(d.join("labels.csv"), csv.lines().take(8).collect::<Vec<_>>().join("\n"))?;
    }

    // Tarballs as untar_data downloads them: a folder of photos and a CSV, plus a link.
    let d = dir("untar")?;
    let mut t = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpg).write_image(img.as_raw(), 13, 9, image::ExtendedColorType::Rgb8)?;
    for (name, data) in [("pets/images/a_1.jpg", &jpg[..]), ("pets/labels.csv", b"fname,label\na_1.jpg,a\n")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        t.append_data(&mut h, name, data)?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    t.append_link(&mut h, "pets/latest.csv", "labels.csv")?;
    std::fs::write(d.join("pets.tgz"), t.into_inner()?.finish()?)?;
    // kestrel-serve requests: the Content-Type line, then the body (one image, or a form).
    let d = dir("serve_request")?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    std::fs::write(d.join("jpeg.req"), [&b"image/jpeg\n"[..], &jpg].concat())?;
    let mut form = b"multipart/form-data; boundary=XyZ\n".to_vec();
    for (name, data) in [("a.jpg", &jpg[..]), ("b.png", &png[..])] {
        form.extend_from_slice(format!("--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n").as_bytes());
        form.extend_from_slice(data);
        form.extend_from_slice(b"\r\n");
    }
    form.extend_from_slice(b"--XyZ--\r\n");
    std::fs::write(d.join("form.req"), form)?;
    println!("seed corpus written to {}", out.display());
    Ok(())
}
