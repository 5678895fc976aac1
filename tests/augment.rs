//! Batch augmentation (issue 3): exactness of the resample, agreement with PyTorch's
//! `affine_grid` + `grid_sample` and with fastai's composed `aug_transforms` (fixture from
//! scripts/ref/augment_fixture.py), seeded draws, errors, and the quality gain of one
//! fused resample over op-by-op resampling on real photos.

use std::collections::HashMap;
use std::path::Path;

use kestrel::transforms::affine::{Mat3, Sampling, dihedral_mat, image_map, resample};
use kestrel::transforms::{AugTransforms, BatchTfms, BatchTransform, Crop, ImageAug, Interpolation, Normalize, PadMode, aug_transforms};
use kestrel::util::rng::seeded;
use kestrel::util::testdata::pets_sample_or_skip;
use tch::{Kind, Tensor};

fn fixture() -> HashMap<String, Tensor> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/augment/augment.safetensors");
    Tensor::read_safetensors(&path).expect("fixture").into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Output on [0, 1]: normalisation with mean 0, std 1.
fn plain(aug: Option<AugTransforms>, size: i64) -> BatchTfms {
    BatchTfms::new(aug, size, Normalize::from_stats([0.0; 3], [1.0; 3]).unwrap()).unwrap()
}

fn u8_batch(n: i64, h: i64, w: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(256, [n, 3, h, w], (Kind::Uint8, tch::Device::Cpu))
}

#[test]
fn identity_parameters_reproduce_the_input() {
    tch::set_num_threads(2);
    let x = u8_batch(4, 20, 20, 1);
    let x01 = x.to_kind(Kind::Float) / 255.0;
    let t = plain(Some(aug_transforms()), 20);
    let y = t.apply_params(&x, &vec![ImageAug::default(); 4]).unwrap();
    assert!(max_diff(&y, &x01) < 1e-6, "{}", max_diff(&y, &x01));
    // Through the grid_sample path too (one image rotated forces it for the batch).
    let mut p = vec![ImageAug::default(); 4];
    p[3].rotate = 17.0;
    let y = t.apply_params(&x, &p).unwrap();
    let d = max_diff(&y.narrow(0, 0, 3), &x01.narrow(0, 0, 3));
    assert!(d < 1e-4, "identity through grid_sample differs by {d}");
    assert!(max_diff(&y.narrow(0, 3, 1), &x01.narrow(0, 3, 1)) > 0.05);
}

#[test]
fn horizontal_flip_is_exact_and_rotate_90_is_transpose_plus_flip() {
    let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
    let flip = ImageAug { dihedral: 1, ..ImageAug::default() };
    let y = plain(None, 16).apply_params(&x, &[flip.clone(), flip]).unwrap();
    assert!(y.equal(&x.flip([3])), "flip is not bit-identical to reversing the width");
    let maps = [image_map(&ImageAug { rotate: 90.0, ..ImageAug::default() }, 16, 16); 2];
    let y = resample(&x, &maps, 16, 16, Sampling::default()).unwrap();
    let d = max_diff(&y, &x.transpose(2, 3).flip([3]));
    assert!(d < 1e-4, "90° rotation vs transpose + flip: {d}");
}

#[test]
fn dihedral_fast_path_equals_grid_sample() {
    let x = Tensor::rand([1, 3, 9, 9], (Kind::Float, tch::Device::Cpu));
    for k in 0..8 {
        let m = dihedral_mat(k);
        let fast = resample(&x, &[m], 9, 9, Sampling::default()).unwrap();
        let theta = Tensor::from_slice(&[m[0][0], m[0][1], m[0][2], m[1][0], m[1][1], m[1][2]]).to_kind(Kind::Float).view([1, 2, 3]);
        let grid = Tensor::affine_grid_generator(&theta, [1, 3, 9, 9], true);
        let slow = x.grid_sampler(&grid, 0, 2, true);
        assert!(max_diff(&fast, &slow) < 1e-5, "dihedral {k}");
    }
}

#[test]
fn matches_pytorch_affine_grid_and_grid_sample() {
    let f = fixture();
    let theta = Vec::<f32>::try_from(f["theta"].reshape([-1])).unwrap();
    let maps: Vec<Mat3> = theta
        .chunks(6)
        .map(|t| [[t[0] as f64, t[1] as f64, t[2] as f64], [t[3] as f64, t[4] as f64, t[5] as f64], [0.0, 0.0, 1.0]])
        .collect();
    let cases = [
        ("grid_bilinear_reflection_1", Interpolation::Bilinear, PadMode::Reflection, true),
        ("grid_nearest_zeros_0", Interpolation::Nearest, PadMode::Zeros, false),
        ("grid_bicubic_border_1", Interpolation::Bicubic, PadMode::Border, true),
        ("grid_bilinear_zeros_0", Interpolation::Bilinear, PadMode::Zeros, false),
    ];
    for (name, mode, pad_mode, align_corners) in cases {
        let y = resample(&f["x"], &maps, 12, 12, Sampling { mode, pad_mode, align_corners }).unwrap();
        let d = max_diff(&y, &f[name]);
        assert!(d < 1e-4, "{name}: max abs diff {d}");
    }
}

/// The fixed draws of scripts/ref/augment_fixture.py (DRAWS).
fn fixture_draws() -> Vec<ImageAug> {
    let rotate = [0., 10., -7.5, 30., 5., -20., 90., 3.];
    let zoom = [1., 1.1, 1.3, 0.8, 1.05, 1.2, 1., 1.5];
    let zoom_col = [0.5, 0.2, 0.9, 0.5, 0.0, 1.0, 0.3, 0.6];
    let zoom_row = [0.5, 0.7, 0.1, 0.5, 1.0, 0.4, 0.8, 0.2];
    let warp_x = [0., 0.2, -0.1, 0.15, 0., -0.2, 0.05, 0.1];
    let warp_y = [0., -0.1, 0.2, 0., 0.18, -0.05, 0.1, -0.2];
    let brightness = [0.5, 0.6, 0.4, 0.55, 0.45, 0.5, 0.6, 0.42];
    let contrast = [1., 1.2, 0.8, 1.1, 0.9, 1.25, 1., 0.85];
    (0..8)
        .map(|i| ImageAug {
            dihedral: i,
            rotate: rotate[i],
            zoom: zoom[i],
            zoom_col: zoom_col[i],
            zoom_row: zoom_row[i],
            warp_x: warp_x[i],
            warp_y: warp_y[i],
            crop: None,
            brightness: brightness[i],
            contrast: contrast[i],
        })
        .collect()
}

#[test]
fn matches_fastai_composed_aug_transforms() {
    let f = fixture();
    let draws = fixture_draws();
    for (name, size) in [("fastai_train_12", 12), ("fastai_train_6", 6)] {
        let y = plain(Some(aug_transforms().with_flip_vert(true)), size).apply_params(&f["x"], &draws).unwrap();
        let d = max_diff(&y, &f[name]);
        assert!(d < 1e-4, "{name}: max abs diff {d}");
    }
    let valid = plain(Some(aug_transforms()), 12);
    let y = valid.apply(&f["x"], false, &mut seeded(0)).unwrap();
    let d = max_diff(&y, &f["fastai_valid_12"]);
    assert!(d < 1e-4, "fastai_valid_12: max abs diff {d}");
}

#[test]
fn matches_fastai_random_resized_crop() {
    let f = fixture();
    let c = Vec::<f32>::try_from(&f["rrc_crop"]).unwrap();
    let crop = Crop { top: c[0] as i64, left: c[1] as i64, height: c[2] as i64, width: c[3] as i64 };
    let p = vec![ImageAug { crop: Some(crop), ..ImageAug::default() }; 8];
    let y = plain(None, 12).apply_params(&f["x"], &p).unwrap();
    let d = max_diff(&y, &f["rrc_12"]);
    assert!(d < 1e-4, "rrc: max abs diff {d}");
}

#[test]
fn seeded_draws_repeat_and_follow_fastai_distributions() {
    let aug = aug_transforms().with_size(32).with_min_scale(0.5);
    let t = BatchTfms::new(Some(aug.clone()), 32, Normalize::imagenet()).unwrap();
    let x = u8_batch(6, 40, 40, 2);
    let a = t.apply(&x, true, &mut seeded(7)).unwrap();
    let b = t.apply(&x, true, &mut seeded(7)).unwrap();
    let c = t.apply(&x, true, &mut seeded(8)).unwrap();
    assert_eq!(a.size(), [6, 3, 32, 32]);
    assert_eq!(a.kind(), Kind::Float);
    assert!(a.equal(&b), "same seed, different output");
    assert!(max_diff(&a, &c) > 0.1, "different seeds, same output");

    let n = 4000;
    let p = aug.draw(n, 460, 460, &mut seeded(1));
    let frac = |f: &dyn Fn(&ImageAug) -> bool| p.iter().filter(|a| f(a)).count() as f64 / n as f64;
    assert!((frac(&|a| a.dihedral == 1) - 0.5).abs() < 0.03);
    assert!((frac(&|a| a.rotate != 0.0) - 0.75).abs() < 0.03);
    assert!((frac(&|a| a.zoom != 1.0) - 0.75).abs() < 0.03);
    assert!((frac(&|a| a.warp_x != 0.0) - 0.75).abs() < 0.03);
    assert!((frac(&|a| a.brightness != 0.5) - 0.75).abs() < 0.03);
    assert!(p.iter().all(|a| a.rotate.abs() <= 10.0 && (1.0..=1.1).contains(&a.zoom) && a.warp_y.abs() <= 0.2));
    assert!(p.iter().all(|a| (0.4..=0.6).contains(&a.brightness) && (0.8..=1.25).contains(&a.contrast)));
    // One crop per batch (fastai RandomResizedCropGPU), of area >= min_scale.
    let crop = p[0].crop.unwrap();
    assert!(p.iter().all(|a| a.crop == Some(crop)));
    assert!(crop.height == crop.width && crop.height * crop.width >= 460 * 460 / 2 - 460);
    // batch=true: one draw for all images.
    let pb = aug.clone().with_batch(true).draw(5, 460, 460, &mut seeded(3));
    assert!(pb.iter().all(|a| *a == pb[0]));
}

#[test]
fn normalize_stats() {
    let x = Tensor::from_slice(&[0u8, 127, 255]).view([1, 1, 1, 3]).expand([1, 3, 1, 3], true).contiguous();
    let lite = Normalize::from_pixel_stats([127.0; 3], [128.0; 3]).unwrap();
    let y = BatchTfms::new(None, 1, lite).unwrap().apply(&x.narrow(3, 2, 1), false, &mut seeded(0)).unwrap();
    assert!(max_diff(&y, &Tensor::ones([1, 3, 1, 1], (Kind::Float, tch::Device::Cpu))) < 1e-5);
    let im = Normalize::imagenet();
    let z = Tensor::rand([2, 3, 4, 4], (Kind::Float, tch::Device::Cpu));
    let e = im.encode(&z).unwrap();
    assert!((e.double_value(&[0, 0, 0, 0]) - (z.double_value(&[0, 0, 0, 0]) - 0.485) / 0.229).abs() < 1e-5);
    assert!(max_diff(&im.decode(&e).unwrap(), &z) < 1e-5);
    assert!(Normalize::from_stats([0.5; 3], [0.0, 1.0, 1.0]).unwrap_err().to_string().contains("std[0]"));
}

#[test]
fn bad_parameters_are_refused_by_name() {
    let err = |a: AugTransforms| BatchTfms::new(Some(a), 224, Normalize::imagenet()).unwrap_err().to_string();
    assert!(err(aug_transforms().with_min_scale(0.0)).contains("min_scale"));
    assert!(err(aug_transforms().with_min_scale(-0.5)).contains("min_scale"));
    assert!(err(aug_transforms().with_min_zoom(0.0)).contains("min_zoom"));
    assert!(err(aug_transforms().with_mult(-1.0)).contains("mult"));
    assert!(err(aug_transforms().with_max_zoom(0.9)).contains("max_zoom"));
    assert!(err(aug_transforms().with_p_affine(1.5)).contains("p_affine"));
    assert!(err(aug_transforms().with_p_lighting(-0.1)).contains("p_lighting"));
    assert!(err(aug_transforms().with_max_lighting(1.0)).contains("max_lighting"));
    assert!(err(aug_transforms().with_size(128)).contains("size 128"));
    assert!(BatchTfms::new(None, 0, Normalize::imagenet()).unwrap_err().to_string().contains("size"));
    let t = BatchTfms::new(Some(aug_transforms()), 224, Normalize::imagenet()).unwrap();
    let e = t.apply(&u8_batch(1, 200, 300, 0), true, &mut seeded(0)).unwrap_err().to_string();
    assert!(e.contains("size 224") && e.contains("200×300"), "{e}");
    let e = t.apply(&Tensor::zeros([1, 1, 300, 300], (Kind::Uint8, tch::Device::Cpu)), true, &mut seeded(0)).unwrap_err();
    assert!(e.to_string().contains("(N, 3, H, W)"), "{e}");
}

/// (1, 3, H, W) u8 tensor of an RGB image.
fn to_tensor(img: &image::RgbImage) -> Tensor {
    let (w, h) = (img.width() as i64, img.height() as i64);
    Tensor::from_slice(img.as_raw()).view([h, w, 3]).permute([2, 0, 1]).unsqueeze(0)
}

/// The reference for the quality test: `map` (in the presized `p`×`p` item's normalised
/// coordinates) applied to the full-size `s`×`s` original in f64, supersampled `k`×`k`
/// per output pixel over its footprint and area-averaged to `out`×`out`, on [0, 1].
fn reference(orig: &Tensor, map: &Mat3, p: i64, out: i64, k: i64) -> Tensor {
    let s = orig.size()[2] as f64;
    let opts = (Kind::Double, tch::Device::Cpu);
    let step = 2.0 / (out - 1) as f64;
    let j = Tensor::arange(out * k, opts);
    let u = (j.divide_scalar_mode(k as f64, "floor") * step - 1.0)
        + ((j.remainder(k as f64) + 0.5) / k as f64 - 0.5) * step;
    let (n, uu, vv) = (out * k, u.view([1, -1]).expand([out * k, out * k], true), u.view([-1, 1]).expand([out * k, out * k], true));
    let hom = |r: usize| &uu * map[r][0] + &vv * map[r][1] + map[r][2];
    let z = hom(2);
    let to_orig = |c: Tensor| {
        let px = (c + 1.0) / 2.0 * (p - 1) as f64;
        ((px + 0.5) * (s / p as f64) - 0.5) / (s - 1.0) * 2.0 - 1.0
    };
    let gx = to_orig(hom(0) / &z);
    let gy = to_orig(hom(1) / &z);
    let grid = Tensor::stack(&[gx, gy], 2).view([1, n, n, 2]);
    let x = orig.to_kind(Kind::Double) / 255.0;
    let fine = x.grid_sampler(&grid, 0, 2, true);
    fine.avg_pool2d([k, k], [k, k], [0, 0], false, true, None::<i64>)
}

fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a.to_kind(Kind::Double) - b).square().mean(Kind::Double).double_value(&[]);
    10.0 * (1.0 / mse).log10()
}

#[test]
fn fused_resample_beats_sequential_on_real_photos() {
    tch::set_num_threads(2);
    let Some(dir) = pets_sample_or_skip("fused_resample_beats_sequential_on_real_photos") else { return };
    let mut files: Vec<_> = std::fs::read_dir(dir.join("images")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let (presize, out) = (460i64, 224i64);
    let t = plain(None, out);
    let (mut sum_fused, mut sum_seq, mut sum_full, mut count) = (0.0, 0.0, 0.0, 0);
    for path in files {
        let img = image::open(&path).unwrap().to_rgb8();
        let s = img.width().min(img.height());
        if s < presize as u32 {
            continue;
        }
        let sq = image::imageops::crop_imm(&img, (img.width() - s) / 2, (img.height() - s) / 2, s, s).to_image();
        let item = image::imageops::resize(&sq, presize as u32, presize as u32, image::imageops::FilterType::Triangle);
        let i = count as f64;
        let p = ImageAug {
            rotate: 6.0 + i,
            zoom: 1.1,
            zoom_col: 0.4,
            zoom_row: 0.6,
            warp_x: 0.15,
            warp_y: -0.1,
            ..ImageAug::default()
        };
        let x = to_tensor(&item);
        let fused = t.apply_params(&x, std::slice::from_ref(&p)).unwrap();
        let seq = t.apply_op_by_op(&x, std::slice::from_ref(&p), false).unwrap();
        let full = t.apply_op_by_op(&x, std::slice::from_ref(&p), true).unwrap();
        let r = reference(&to_tensor(&sq), &image_map(&p, presize, presize), presize, out, 4);
        let (pf, ps, pl) = (psnr(&fused, &r), psnr(&seq, &r), psnr(&full, &r));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        println!("{name}: fused {pf:.2} dB, sequential {ps:.2} dB, sequential at item size {pl:.2} dB");
        sum_fused += pf;
        sum_seq += ps;
        sum_full += pl;
        count += 1;
        if count == 6 {
            break;
        }
    }
    assert!(count > 0, "no photo of at least {presize} px in the sample");
    let (f, s, l) = (sum_fused / count as f64, sum_seq / count as f64, sum_full / count as f64);
    println!(
        "PSNR vs float64 full-size reference, mean over {count} photos: fused one resample {f:.2} dB, \
         three sequential resamples (fastai uncomposed, each to {out} px) {s:.2} dB; for information, \
         sequential with {presize}-px intermediates {l:.2} dB"
    );
    assert!(f > s, "fused {f:.2} dB should beat sequential {s:.2} dB");
}
