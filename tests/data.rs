//! The data pipeline: items, labels, splits, decoding, resizing, loaders, summary,
//! show_batch — on synthetic images made here, and on the pets sample when present.

use image::{GenericImageView, ImageBuffer, ImageEncoder, Luma, LumaA, Rgb, RgbImage, Rgba};
use kestrel::data::decode::decode_rgb;
use kestrel::data::split::permutation;
use kestrel::data::{BatchSource, DataBlock, ItemTfm, Labeller, PadMode, ResizeMethod, Source, Splitter, get_image_files};
use kestrel::transforms::BatchTransform;
use kestrel::util::rng::{Rng, seeded};
use kestrel::util::testdata::pets_sample_or_skip;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

fn rgb(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| Rgb(f(x, y)))
}

/// A folder of `per_class` PNGs for each class, named `<class>_<n>.png`, of varying sizes.
fn class_folder(dir: &Path, classes: &[&str], per_class: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (c, name) in classes.iter().enumerate() {
        for k in 0..per_class {
            let p = dir.join(format!("{name}_{k}.png"));
            rgb(20 + k as u32, 16 + c as u32, |x, _| [c as u8 * 40, k as u8 * 10, x as u8]).save(&p).unwrap();
            out.push(p);
        }
    }
    out
}

#[test]
fn get_image_files_sorted_case_insensitive_and_counts_others() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    for n in ["b.JPG", "a.png", "sub/c.Tiff", "x.webp", "y.gif", "z.bmp", "w.jpeg", "v.tif"] {
        std::fs::write(d.path().join(n), b"x").unwrap();
    }
    std::fs::write(d.path().join("annotations.mat"), b"x").unwrap();
    std::fs::write(d.path().join("notes.txt"), b"x").unwrap();
    let f = get_image_files(d.path(), true).unwrap();
    let names: Vec<String> = f.files.iter().map(|p| p.strip_prefix(d.path()).unwrap().display().to_string()).collect();
    assert_eq!(names, ["a.png", "b.JPG", "sub/c.Tiff", "v.tif", "w.jpeg", "x.webp", "y.gif", "z.bmp"]);
    assert_eq!(f.n_ignored, 2);
    assert_eq!(get_image_files(d.path(), false).unwrap().files.len(), 7);
}

#[test]
fn decodes_every_colour_mode_to_rgb8() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    ImageBuffer::<Luma<u8>, _>::from_pixel(4, 3, Luma([100])).save(p("l8.png")).unwrap();
    ImageBuffer::<LumaA<u8>, _>::from_pixel(4, 3, LumaA([100, 7])).save(p("la8.png")).unwrap();
    ImageBuffer::<Rgba<u8>, _>::from_pixel(4, 3, Rgba([10, 20, 30, 0])).save(p("rgba.png")).unwrap();
    ImageBuffer::<Rgb<u16>, _>::from_pixel(4, 3, Rgb([65535, 32896, 0])).save(p("rgb16.png")).unwrap();
    ImageBuffer::<Luma<u16>, _>::from_pixel(4, 3, Luma([257 * 9])).save(p("l16.png")).unwrap();
    rgb(4, 3, |_, _| [200, 100, 50]).save(p("rgb.bmp")).unwrap();
    rgb(4, 3, |_, _| [200, 100, 50]).save(p("rgb.tiff")).unwrap();
    rgb(4, 3, |_, _| [200, 100, 50]).save(p("rgb.webp")).unwrap();
    // Palette: GIF is always indexed colour.
    rgb(4, 3, |_, _| [255, 0, 0]).save(p("pal.gif")).unwrap();
    let px = |n: &str| {
        let i = decode_rgb(&p(n)).unwrap_or_else(|e| panic!("{n}: {e:#}"));
        assert_eq!(i.dimensions(), (4, 3), "{n}");
        i.get_pixel(1, 1).0
    };
    assert_eq!(px("l8.png"), [100, 100, 100]);
    assert_eq!(px("la8.png"), [100, 100, 100]);
    assert_eq!(px("rgba.png"), [10, 20, 30]);
    assert_eq!(px("rgb16.png"), [255, 128, 0]);
    assert_eq!(px("l16.png"), [9, 9, 9]);
    assert_eq!(px("rgb.bmp"), [200, 100, 50]);
    assert_eq!(px("rgb.tiff"), [200, 100, 50]);
    assert_eq!(px("rgb.webp"), [200, 100, 50]);
    assert_eq!(px("pal.gif"), [255, 0, 0]);
    // JPEG grayscale and RGB (lossy: approximately).
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95)
        .write_image(&[90u8; 12], 4, 3, image::ExtendedColorType::L8)
        .unwrap();
    std::fs::write(p("gray.jpg"), &buf).unwrap();
    let g = px("gray.jpg");
    assert!(g.iter().all(|&v| v.abs_diff(90) <= 2), "{g:?}");
}

#[test]
fn cmyk_jpeg_decodes_to_the_right_colours() {
    // Made by scripts/ref/data_cmyk_jpeg.py with PIL: left half red, right half blue.
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/cmyk.jpg");
    let i = decode_rgb(&p).unwrap();
    assert_eq!(i.dimensions(), (16, 8));
    let (l, r) = (i.get_pixel(2, 4).0, i.get_pixel(13, 4).0);
    let near = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 12);
    assert!(near(l, [255, 0, 0]), "left {l:?}");
    assert!(near(r, [0, 0, 255]), "right {r:?}");
}

/// A minimal JPEG with an EXIF APP1 segment giving `orientation`.
fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 100)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .unwrap();
    let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let len = (app1.len() + 2) as u16;
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    let d = tempfile::tempdir().unwrap();
    // 32x16: left half black, right half white.
    let img = rgb(32, 16, |x, _| if x < 16 { [0; 3] } else { [255; 3] });
    let p = d.path().join("rot.jpg");
    std::fs::write(&p, jpeg_with_orientation(&img, 6)).unwrap(); // 6 = rotate 90° clockwise
    let r = decode_rgb(&p).unwrap();
    assert_eq!(r.dimensions(), (16, 32));
    // After a clockwise quarter turn the left (black) half is on top.
    assert!(r.get_pixel(8, 4).0[0] < 30 && r.get_pixel(8, 28).0[0] > 225);
}

#[test]
fn content_sniffing_and_bad_files() {
    let d = tempfile::tempdir().unwrap();
    let png_as_jpg = d.path().join("really_png.jpg");
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png).write_image(&[1, 2, 3, 4, 5, 6], 2, 1, image::ExtendedColorType::Rgb8).unwrap();
    std::fs::write(&png_as_jpg, &png).unwrap();
    assert_eq!(decode_rgb(&png_as_jpg).unwrap().get_pixel(1, 0).0, [4, 5, 6]);

    let empty = d.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let e = format!("{:#}", decode_rgb(&empty).unwrap_err());
    assert!(e.contains("empty.jpg") && e.contains("empty (0 bytes)"), "{e}");

    let text = d.path().join("text.png");
    std::fs::write(&text, b"hello, not an image at all").unwrap();
    let e = format!("{:#}", decode_rgb(&text).unwrap_err());
    assert!(e.contains("text.png") && e.contains("not an image"), "{e}");

    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpg).write_image(&[128; 64 * 64 * 3], 64, 64, image::ExtendedColorType::Rgb8).unwrap();
    let trunc = d.path().join("trunc.jpg");
    std::fs::write(&trunc, &jpg[..jpg.len() / 3]).unwrap();
    let trunc_png = d.path().join("trunc.png");
    std::fs::write(&trunc_png, &png[..png.len() - 20]).unwrap();
    for p in [&trunc, &trunc_png] {
        let e = format!("{:#}", decode_rgb(p).expect_err("a truncated file must fail"));
        assert!(e.contains(p.file_name().unwrap().to_str().unwrap()), "{e}");
    }
    let e = format!("{:#}", decode_rgb(&trunc).unwrap_err());
    assert!(e.contains("truncated JPEG"), "{e}");
    // Cut just before the end-of-image marker: the decoder alone would return grey pixels.
    std::fs::write(&trunc, &jpg[..jpg.len() - 2]).unwrap();
    assert!(format!("{:#}", decode_rgb(&trunc).unwrap_err()).contains("truncated JPEG"));
}

#[test]
fn skip_bad_leaves_out_bad_files_and_counts_them() {
    let d = tempfile::tempdir().unwrap();
    class_folder(d.path(), &["cat", "dog"], 4);
    std::fs::write(d.path().join("cat_9.png"), b"").unwrap();
    std::fs::write(d.path().join("dog_9.png"), b"garbage").unwrap();
    let block = DataBlock::new(Source::Folder { path: d.path().into(), recurse: true }, Labeller::name_regex(r"^(.+)_\d+\.png$").unwrap())
        .splitter(Splitter::Stratified { valid_pct: 0.2, seed: 1 })
        .item_tfm(Some(ItemTfm::resize(8)))
        .bs(4)
        .workers(2);
    let dls = block.image_dataloaders().unwrap();
    let err = dls.valid.batches(0).find_map(Result::err).or_else(|| dls.train.batches(0).find_map(Result::err));
    // Without skip_bad the bad file stops the pass with its name.
    let e = format!("{:#}", err.expect("an error for the bad files"));
    assert!(e.contains("cat_9.png") || e.contains("dog_9.png"), "{e}");
    assert!(e.contains("--skip-bad"), "the error names the way around it: {e}");
    let dls = block.skip_bad(true).image_dataloaders().unwrap();
    let n: i64 = dls.valid.batches(0).map(|b| b.unwrap().x.size()[0]).sum();
    let n_bad_valid = dls.valid.n_skipped();
    assert_eq!(n as usize + n_bad_valid, dls.valid.n_items());
    let dl = &dls.train;
    let total: i64 = dl.batches(0).map(|b| b.unwrap().x.size()[0]).sum();
    assert_eq!(total as usize + dl.n_skipped(), dl.n_items());
    assert_eq!(dls.valid.n_skipped() + dls.train.n_skipped(), 2);
    // Another pass counts (and warns about) each bad file once; skipped_items names them.
    let _ = dl.batches(1).count();
    assert_eq!(dls.valid.n_skipped() + dls.train.n_skipped(), 2);
    let mut names: Vec<String> = [&dls.valid, &dls.train]
        .iter()
        .flat_map(|l| l.skipped_items().into_iter().map(|i| l.paths()[i].file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .collect();
    names.sort();
    assert_eq!(names, ["cat_9.png", "dog_9.png"]);
}

#[test]
fn labellers_and_their_errors() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("train/cat")).unwrap();
    std::fs::create_dir_all(d.path().join("valid/dog")).unwrap();
    class_folder(&d.path().join("train/cat"), &["cat"], 2);
    class_folder(&d.path().join("valid/dog"), &["dog"], 1);
    std::fs::write(d.path().join("train/cat/Cat.PNG"), b"x").unwrap();
    let items = kestrel::data::Items::from_folder(d.path(), true).unwrap();
    assert_eq!(Labeller::Parent.label_all(&items).unwrap(), ["cat", "cat", "cat", "dog"]);
    let e = format!("{:#}", Labeller::name_regex(r"^(.+)_\d+\.png$").unwrap().label_all(&items).unwrap_err());
    assert!(e.contains("1 of 4 items") && e.contains("Cat.PNG") && e.contains(r"^(.+)_\d+\.png$"), "{e}");
    assert!(Labeller::name_regex("no_group").is_err());
    let f = Labeller::Func(Arc::new(|p: &Path| Ok(p.extension().unwrap().to_string_lossy().to_lowercase())));
    assert_eq!(f.label_all(&items).unwrap(), ["png"; 4]);
    // GrandparentSplitter
    let (tr, va) = Splitter::Grandparent { train_name: "train".into(), valid_name: "valid".into() }.split(&items, &[]).unwrap();
    assert_eq!((tr, va), (vec![0, 1, 2], vec![3]));
    // a label only in validation is an error naming it
    let labels: Vec<String> = Labeller::Parent.label_all(&items).unwrap();
    let e = kestrel::data::block::check_split(&labels, &[0, 1, 2], &[3], &Splitter::Col("x".into())).unwrap_err();
    assert!(format!("{e}").contains("only in the validation set") && format!("{e}").contains("dog"));
    let e = kestrel::data::block::check_split(&labels, &[], &[0, 1, 2, 3], &Splitter::Col("x".into())).unwrap_err();
    assert!(format!("{e}").contains("training set is empty"));
    let e = kestrel::data::block::check_split(&labels, &[0, 1, 2, 3], &[], &Splitter::Col("x".into())).unwrap_err();
    assert!(format!("{e}").contains("validation set is empty"));
    let w = kestrel::data::block::check_split(&labels, &[0, 3], &[1, 2], &Splitter::Col("x".into())).unwrap();
    assert_eq!(w, ["1 class(es) have a single photo: dog"]);
}

#[test]
fn csv_items_col_splitter_and_file_splitter() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("images")).unwrap();
    class_folder(&d.path().join("images"), &["a", "b"], 3);
    let csv = d.path().join("labels.csv");
    std::fs::write(&csv, "fname,label,is_valid,tags\nimages/a_0.png,a,False,x y\nimages/a_1.png,a,1,x\nimages/a_2.png,a,false,\nimages/b_0.png,b,0,y\nimages/b_1.png,b,True,x  y\nimages/b_2.png,b,no,\n").unwrap();
    let block = DataBlock::new(
        Source::Csv { file: csv.clone(), fn_col: "fname".into(), pref: None, suffix: String::new() },
        Labeller::Col { col: "tags".into(), label_delim: Some(' ') },
    );
    let items = block.items().unwrap();
    assert!(items.paths[0].ends_with("images/a_0.png") && items.paths[0].is_file());
    let (tr, va) = Splitter::Col("is_valid".into()).split(&items, &[]).unwrap();
    assert_eq!((tr, va), (vec![0, 2, 3, 5], vec![1, 4]));
    assert!(Splitter::Col("nope".into()).split(&items, &[]).unwrap_err().to_string().contains("is_valid"));
    assert_eq!(kestrel::data::label::multi_labels("x  y", ' '), ["x", "y"]);
    let e = format!("{:#}", block.datasets().unwrap_err());
    assert!(e.contains("2 of 6 items") && e.contains("empty 'tags' cell"), "{e}");
    let list = d.path().join("valid.txt");
    std::fs::write(&list, "a_1.png\nimages/b_2.png\n").unwrap();
    assert_eq!(Splitter::File(list).split(&items, &[]).unwrap().1, vec![1, 5]);
    // A label only in the valid rows is reported with its name.
    std::fs::write(&csv, "fname,label,is_valid\nimages/a_0.png,a,0\nimages/a_1.png,a,0\nimages/b_0.png,b,1\n").unwrap();
    let block = DataBlock::new(block.source.clone(), Labeller::Col { col: "label".into(), label_delim: None }).splitter(Splitter::Col("is_valid".into()));
    let e = format!("{:#}", block.datasets().unwrap_err());
    assert!(e.contains("only in the validation set") && e.contains(": b"), "{e}");
}

#[test]
fn seeds_give_identical_splits_and_batch_orders() {
    // Fixed values: the ChaCha8 stream and our Fisher–Yates are the same on every platform.
    assert_eq!(permutation(10, &mut seeded(42)), permutation(10, &mut seeded(42)));
    assert_ne!(permutation(10, &mut seeded(42)), permutation(10, &mut seeded(43)));
    let mut p = permutation(10, &mut seeded(42));
    p.sort();
    assert_eq!(p, (0..10).collect::<Vec<_>>());
    let d = tempfile::tempdir().unwrap();
    class_folder(d.path(), &["a", "b", "c"], 10);
    let items = kestrel::data::Items::from_folder(d.path(), false).unwrap();
    let labels = Labeller::name_regex(r"^(.+)_\d+\.png$").unwrap().label_all(&items).unwrap();
    let s = Splitter::Random { valid_pct: 0.2, seed: 7 };
    let (tr, va) = s.split(&items, &labels).unwrap();
    assert_eq!((tr.len(), va.len()), (24, 6));
    assert_eq!(s.split(&items, &labels).unwrap(), (tr.clone(), va.clone()));
    assert_ne!(Splitter::Random { valid_pct: 0.2, seed: 8 }.split(&items, &labels).unwrap().1, va);
    let (str_, sva) = Splitter::Stratified { valid_pct: 0.2, seed: 7 }.split(&items, &labels).unwrap();
    assert_eq!((str_.len(), sva.len()), (24, 6));
    for c in ["a", "b", "c"] {
        assert_eq!(sva.iter().filter(|&&i| labels[i] == c).count(), 2, "class {c}");
    }
    // Batch order: same seed → same targets in the same order, regardless of threads.
    let block = |workers| {
        DataBlock::new(Source::Folder { path: d.path().into(), recurse: false }, Labeller::name_regex(r"^(.+)_\d+\.png$").unwrap())
            .item_tfm(Some(ItemTfm::resize(8)))
            .bs(5)
            .seed(3)
            .workers(workers)
            .dataloaders()
            .unwrap()
    };
    let ys = |dls: &kestrel::data::DataLoaders, epoch| -> Vec<Vec<i64>> {
        dls.train.batches(epoch).map(|b| Vec::<i64>::try_from(b.unwrap().y).unwrap()).collect()
    };
    let (a, b, c) = (block(0), block(3), block(1));
    assert_eq!(a.train.n_batches(), 4); // 24 items, drop_last
    assert_eq!(ys(&a, 0), ys(&b, 0));
    assert_eq!(ys(&a, 1), ys(&c, 1));
    assert_ne!(ys(&a, 0), ys(&a, 1));
    let xs = |dls: &kestrel::data::DataLoaders| -> Vec<Tensor> { dls.train.batches(0).map(|b| b.unwrap().x).collect() };
    for (x, y) in xs(&a).iter().zip(xs(&b)) {
        assert!(x.equal(&y));
    }
    // validation in order, not dropped
    let v: Vec<usize> = a.valid.batches(0).map(|b| b.unwrap().y.size()[0] as usize).collect();
    assert_eq!(v, [5, 1]);
    // dropping the iterator early stops the workers (no hang)
    let mut it = b.train.batches(0);
    assert!(it.next().unwrap().is_ok());
    drop(it);
}

#[test]
fn resize_methods_follow_fastai() {
    let mut rng: Rng = seeded(0);
    // 40x20: left quarter red, rest blue.
    let img = rgb(40, 20, |x, _| if x < 10 { [255, 0, 0] } else { [0, 0, 255] });
    let crop = ItemTfm::resize(10);
    let v = crop.apply(&img, false, &mut rng).unwrap();
    assert_eq!(v.dimensions(), (10, 10));
    // centre crop = x 10..30: all blue
    assert!(v.pixels().all(|p| p.0[2] > 250 && p.0[0] < 5));
    // training crops land at random places: some include red
    let any_red = (0..20).any(|_| crop.apply(&img, true, &mut rng).unwrap().get_pixel(0, 5).0[0] > 200);
    assert!(any_red);
    let squish = ItemTfm::Resize { size: (10, 10), method: ResizeMethod::Squish, pad_mode: PadMode::Zeros };
    let s = squish.apply(&img, false, &mut rng).unwrap();
    assert!(s.get_pixel(0, 5).0[0] > 250 && s.get_pixel(9, 5).0[2] > 250);
    for (mode, top) in [(PadMode::Zeros, [0, 0, 0]), (PadMode::Border, [255, 0, 0]), (PadMode::Reflection, [255, 0, 0])] {
        let pad = ItemTfm::Resize { size: (40, 40), method: ResizeMethod::Pad, pad_mode: mode };
        let p = pad.apply(&img, false, &mut rng).unwrap();
        assert_eq!(p.dimensions(), (40, 40));
        assert_eq!(p.get_pixel(2, 2).0, top, "{mode:?}");
        assert_eq!(p.get_pixel(30, 20).0, [0, 0, 255], "{mode:?}");
    }
    let rrc = ItemTfm::random_resized_crop(16, 0.35);
    assert_eq!(rrc.apply(&img, true, &mut rng).unwrap().dimensions(), (16, 16));
    assert_eq!(rrc.apply(&img, false, &mut rng).unwrap().dimensions(), (16, 16));
    // non-square target (height, width)
    let r = ItemTfm::Resize { size: (6, 12), method: ResizeMethod::Crop, pad_mode: PadMode::Zeros };
    assert_eq!(r.apply(&img, true, &mut rng).unwrap().dimensions(), (12, 6));
}

/// A batch transform of our own: flips horizontally and converts to f32 0..1.
struct FlipToFloat;
impl BatchTransform for FlipToFloat {
    fn apply(&self, x: &Tensor, train: bool, _rng: &mut Rng) -> kestrel::Result<Tensor> {
        let x = x.to_kind(Kind::Float) / 255.0;
        Ok(if train { x.flip([3]) } else { x })
    }
}

#[test]
fn batch_tfms_hook_summary_and_show_batch() {
    let d = tempfile::tempdir().unwrap();
    class_folder(d.path(), &["left", "right"], 5);
    let block = DataBlock::new(Source::Folder { path: d.path().into(), recurse: false }, Labeller::name_regex(r"^(.+)_\d+\.png$").unwrap())
        .splitter(Splitter::Stratified { valid_pct: 0.2, seed: 0 })
        .item_tfm(Some(ItemTfm::Resize { size: (8, 8), method: ResizeMethod::Squish, pad_mode: PadMode::Zeros }))
        .bs(4)
        .workers(2);
    let plain = block.image_dataloaders().unwrap();
    let tf = block.clone().batch_tfms(Some(Arc::new(FlipToFloat))).image_dataloaders().unwrap();
    let (p, t) = (plain.train.one_batch().unwrap(), tf.train.one_batch().unwrap());
    assert_eq!((p.x.kind(), p.x.size()), (Kind::Uint8, vec![4, 3, 8, 8]));
    assert_eq!(t.x.kind(), Kind::Float);
    assert!(t.x.allclose(&(p.x.to_kind(Kind::Float) / 255.0).flip([3]), 1e-6, 1e-6, false));
    let pv = plain.valid.one_batch().unwrap();
    assert!(tf.valid.one_batch().unwrap().x.allclose(&(pv.x.to_kind(Kind::Float) / 255.0), 1e-6, 1e-6, false));

    let s = kestrel::data::summary::summary(&block);
    assert!(s.ok, "{s}");
    for want in ["Found 10 items", "2 datasets of sizes 8,2", "Decoded: Png Rgb8", "-> 8x8", "x: [4, 3, 8, 8] Uint8", "y: [4] Int64"] {
        assert!(s.text.contains(want), "missing '{want}' in:\n{s}");
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("grid.png");
    kestrel::data::show::show_loader_batch(&tf.train, &tf.datasets.vocab, 2, 2, true, kestrel::data::show::Denorm::None, &out).unwrap();
    let g = image::open(&out).unwrap();
    assert_eq!(g.dimensions(), (2 * 8 + 3 * 6, 2 * (8 + 26) + 3 * 6));
    // every file broken: the summary stops at the decode step, naming the reason
    for f in std::fs::read_dir(d.path()).unwrap() {
        std::fs::write(f.unwrap().path(), b"nope").unwrap();
    }
    let s = kestrel::data::summary::summary(&block);
    assert!(!s.ok && s.text.contains("FAILED at step 'decode") && s.text.contains("not an image"), "{s}");
}

#[test]
fn pets_sample_labels_splits_and_batch() {
    let Some(pets) = pets_sample_or_skip("pets_sample_labels_splits_and_batch") else { return };
    tch::set_num_threads(1);
    let block = DataBlock::new(Source::Folder { path: pets.join("images"), recurse: true }, Labeller::name_regex(kestrel::data::PETS_PATTERN).unwrap());
    let ds = block.datasets().unwrap();
    assert_eq!((ds.items.len(), ds.vocab.len()), (370, 37));
    assert_eq!((ds.train.len(), ds.valid.len()), (296, 74));
    let csv = DataBlock::new(
        Source::Csv { file: pets.join("labels.csv"), fn_col: "fname".into(), pref: None, suffix: String::new() },
        Labeller::Col { col: "label".into(), label_delim: None },
    )
    .splitter(Splitter::Col("is_valid".into()))
    .workers(2);
    let dls = csv.image_dataloaders().unwrap();
    assert_eq!((dls.datasets.train.len(), dls.datasets.valid.len(), dls.datasets.vocab.len()), (296, 74, 37));
    assert_eq!(dls.datasets.vocab.items(), ds.vocab.items());
    let b = dls.train.one_batch().unwrap();
    assert_eq!((b.x.size(), b.x.kind(), b.y.size(), b.y.kind()), (vec![64, 3, 460, 460], Kind::Uint8, vec![64], Kind::Int64));
    assert_eq!(dls.train.n_batches(), 4);
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pets_show_batch.png");
    kestrel::data::show::show_loader_batch(&dls.train, &dls.datasets.vocab, 3, 3, false, kestrel::data::show::Denorm::None, &out).unwrap();
    assert_eq!(image::open(&out).unwrap().width(), 3 * 256 + 4 * 6);
    eprintln!("show_batch grid written to {}", out.display());
}
