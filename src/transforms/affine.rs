//! Coordinate maps of the geometric augmentations and the one resample that applies them.
//!
//! Every map sends an OUTPUT coordinate to the INPUT coordinate it samples, in PyTorch's
//! normalised coordinates (x = column, y = row, both in [-1, 1] over the image; with
//! `align_corners` ±1 are the centres of the corner pixels). Maps are 3×3 homogeneous
//! matrices in f64: the affine ones (fastai `flip_mat`, `dihedral_mat`, `rotate_mat`,
//! `zoom_mat`, the crop of `RandomResizedCropGPU`) and the perspective warp (fastai
//! `find_coeffs` / `apply_perspective`) compose into ONE matrix per image
//! ([`image_map`]), sampled with ONE `grid_sampler` call per batch ([`resample`]).

use anyhow::ensure;
use tch::{Device, Kind, Tensor};

use super::augment::{Crop, ImageAug, Interpolation, PadMode};

/// A 3×3 homogeneous coordinate map (row-major).
pub type Mat3 = [[f64; 3]; 3];

/// The identity map.
pub const IDENTITY: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// Matrix product `a · b` (apply `b` first, then `a`, to an output coordinate).
pub fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut m = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    m
}

/// fastai `dihedral_mat` for index `k` in 0..8 (0 identity, 1 horizontal flip — fastai
/// `flip_mat` —, 2 vertical flip, 3..8 the transposes and 180° rotation).
pub fn dihedral_mat(k: usize) -> Mat3 {
    const XS: [f64; 8] = [1., -1., 1., -1., -1., 1., 1., -1.];
    const YS: [f64; 8] = [1., 1., -1., 1., -1., -1., 1., -1.];
    const M0: [f64; 8] = [1., 1., 1., 0., 1., 0., 0., 0.];
    const M1: [f64; 8] = [0., 0., 0., 1., 0., 1., 1., 1.];
    let k = k % 8;
    [[XS[k] * M0[k], XS[k] * M1[k], 0.0], [YS[k] * M1[k], YS[k] * M0[k], 0.0], [0.0, 0.0, 1.0]]
}

/// fastai `rotate_mat` for `deg` degrees: [[cos θ, sin θ, 0], [−sin θ, cos θ, 0]].
pub fn rotate_mat(deg: f64) -> Mat3 {
    let (s, c) = deg.to_radians().sin_cos();
    [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]
}

/// fastai `zoom_mat`: scale 1/`zoom` about the centre chosen by `col`, `row` in [0, 1].
pub fn zoom_mat(zoom: f64, col: f64, row: f64) -> Mat3 {
    let s = 1.0 / zoom;
    [[s, 0.0, (1.0 - s) * (2.0 * col - 1.0)], [0.0, s, (1.0 - s) * (2.0 * row - 1.0)], [0.0, 0.0, 1.0]]
}

/// fastai `_prepare_mat`: corrects the rotation terms of an affine map for an `h`×`w`
/// (non-square) input.
pub fn prepare(mut m: Mat3, h: i64, w: i64) -> Mat3 {
    m[0][1] *= h as f64 / w as f64;
    m[1][0] *= w as f64 / h as f64;
    m
}

/// The crop of `RandomResizedCropGPU` as a map from the output's coordinates to the
/// `h`×`w` input's (fastai slices the crop, then resizes it with `align_corners=True`).
pub fn crop_mat(c: &Crop, h: i64, w: i64) -> Mat3 {
    let axis = |start: i64, len: i64, full: i64| {
        let full = (full - 1).max(1) as f64;
        ((len - 1) as f64 / full, (2 * start + len - 1) as f64 / full - 1.0)
    };
    let (ax, bx) = axis(c.left, c.width, w);
    let (ay, by) = axis(c.top, c.height, h);
    [[ax, 0.0, bx], [0.0, ay, by], [0.0, 0.0, 1.0]]
}

/// fastai `_WarpCoord` + `find_coeffs`: the perspective map that sends the corners
/// moved by (`warp_x`, `warp_y`) back to the image corners, applied to the coordinates
/// after the affine map. Solves fastai's 8×8 system in f64.
pub fn warp_mat(warp_x: f64, warp_y: f64) -> Mat3 {
    if warp_x == 0.0 && warp_y == 0.0 {
        return IDENTITY;
    }
    let (x, y) = (warp_x, warp_y);
    let orig = [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]];
    let targ = [[-1.0 - y, -1.0 - x], [-1.0 + y, 1.0 + x], [1.0 + y, -1.0 + x], [1.0 - y, 1.0 - x]];
    // find_coeffs(p1 = orig, p2 = targ): the map sends p2 to p1.
    let mut a = [[0.0f64; 9]; 8];
    for i in 0..4 {
        let (p1, p2) = (orig[i], targ[i]);
        a[2 * i] = [p2[0], p2[1], 1.0, 0.0, 0.0, 0.0, -p1[0] * p2[0], -p1[0] * p2[1], p1[0]];
        a[2 * i + 1] = [0.0, 0.0, 0.0, p2[0], p2[1], 1.0, -p1[1] * p2[0], -p1[1] * p2[1], p1[1]];
    }
    let c = solve8(a);
    [[c[0], c[1], c[2]], [c[3], c[4], c[5]], [c[6], c[7], 1.0]]
}

/// Gaussian elimination with partial pivoting on an augmented 8×9 system.
fn solve8(mut a: [[f64; 9]; 8]) -> [f64; 8] {
    for col in 0..8 {
        let piv = (col..8).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, piv);
        for r in 0..8 {
            if r != col && a[col][col] != 0.0 {
                let f = a[r][col] / a[col][col];
                for k in col..9 {
                    a[r][k] -= f * a[col][k];
                }
            }
        }
    }
    std::array::from_fn(|i| a[i][8] / a[i][i])
}

/// The whole geometric augmentation of one image of an `h`×`w` batch as ONE map, in
/// fastai's order: output → crop (`RandomResizedCropGPU`) → `_prepare_mat(flip/dihedral
/// · rotate · zoom)` → perspective warp → input coordinate.
///
/// Like fastai's `apply_perspective`, a warp that would send part of the output to
/// infinity (homogeneous w ≤ 0 at a corner) is dropped for that image.
pub fn image_map(a: &ImageAug, h: i64, w: i64) -> Mat3 {
    let aff = matmul(&matmul(&dihedral_mat(a.dihedral), &rotate_mat(a.rotate)), &zoom_mat(a.zoom, a.zoom_col, a.zoom_row));
    let mut m = prepare(aff, h, w);
    if let Some(c) = &a.crop {
        m = matmul(&m, &crop_mat(c, h, w));
    }
    let warped = matmul(&warp_mat(a.warp_x, a.warp_y), &m);
    let corners = [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]];
    if corners.iter().all(|p| warped[2][0] * p[0] + warped[2][1] * p[1] + warped[2][2] > 1e-6) { warped } else { m }
}

/// The same transform as [`image_map`] split into one map per fastai transform (warp,
/// flip/dihedral, rotate, zoom, crop), each to be done as its own resample: the op-by-op
/// baseline that fusion replaces. For square items the product of the stages, in order,
/// equals [`image_map`].
pub fn stage_maps(a: &ImageAug, h: i64, w: i64) -> [Mat3; 5] {
    [
        warp_mat(a.warp_x, a.warp_y),
        prepare(dihedral_mat(a.dihedral), h, w),
        prepare(rotate_mat(a.rotate), h, w),
        zoom_mat(a.zoom, a.zoom_col, a.zoom_row),
        a.crop.map_or(IDENTITY, |c| crop_mat(&c, h, w)),
    ]
}

/// How [`resample`] samples: PyTorch `grid_sample`'s `mode`, `padding_mode` and
/// `align_corners`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampling {
    /// Interpolation (`mode`).
    pub mode: Interpolation,
    /// Padding outside the image (`padding_mode`).
    pub pad_mode: PadMode,
    /// `align_corners`: ±1 are the centres of the corner pixels when true.
    pub align_corners: bool,
}

impl Default for Sampling {
    /// fastai's defaults: bilinear, reflection padding, `align_corners=True`.
    fn default() -> Self {
        Sampling { mode: Interpolation::Bilinear, pad_mode: PadMode::Reflection, align_corners: true }
    }
}

/// Samples each image of `x` (N, C, H, W), any float kind and device, through its map
/// `maps[i]` onto an `out_h`×`out_w` grid: ONE `affine_grid` (+ perspective division
/// when a map has one) and ONE `grid_sampler` call for the batch. Returns
/// (N, C, out_h, out_w) in `x`'s kind and device, always a new tensor (never a view of `x`).
///
/// As fastai's `_grid_sample`, bilinear downsampling by more than 2.2× (fastai: 2×) that
/// the maps do not undo first shrinks `x` by area averaging (`F.interpolate(mode='area')`)
/// to limit aliasing (see [`MIN_PRESHRINK`]). Maps that are exact pixel permutations at
/// the input size (identity, flips, dihedral) are done with exact index operations — what
/// sampling at the pixel centres gives, without float rounding.
///
/// Errors: `maps.len()` ≠ N, a non-4-D or non-float `x`, or a non-positive output size.
pub fn resample(x: &Tensor, maps: &[Mat3], out_h: i64, out_w: i64, s: Sampling) -> crate::Result<Tensor> {
    let size = x.size();
    ensure!(size.len() == 4, "resample: expected a (N, C, H, W) batch, got shape {size:?}");
    ensure!(x.is_floating_point(), "resample: expected a float batch, got {:?}", x.kind());
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    ensure!(maps.len() as i64 == n, "resample: {} maps for a batch of {n} images", maps.len());
    ensure!(out_h > 0 && out_w > 0, "resample: output size must be positive, got {out_h}×{out_w}");
    if (out_h, out_w) == (h, w) && maps.iter().all(|m| is_pixel_permutation(m, h, w)) {
        let imgs: Vec<Tensor> = maps.iter().enumerate().map(|(i, m)| permute_pixels(&x.get(i as i64), m)).collect();
        return Ok(Tensor::stack(&imgs, 0));
    }
    let x = shrink_first(x, maps, out_h, out_w, s);
    let (dev, kind) = (x.device(), x.kind());
    let grid = if maps.iter().all(|m| m[2] == [0.0, 0.0, 1.0]) {
        let theta: Vec<f32> = maps.iter().flat_map(|m| m[..2].iter().flatten().map(|&v| v as f32)).collect();
        let theta = Tensor::from_slice(&theta).view([n, 2, 3]).to_device(dev).to_kind(kind);
        Tensor::affine_grid_generator(&theta, [n, c, out_h, out_w], s.align_corners)
    } else {
        projective_grid(maps, out_h, out_w, s.align_corners, dev, kind)
    };
    Ok(x.grid_sampler(&grid, s.mode.code(), s.pad_mode.code(), s.align_corners))
}

/// The (N, out_h, out_w, 2) sampling grid of homographies: the base grid in homogeneous
/// coordinates times each map, divided by its third coordinate.
fn projective_grid(maps: &[Mat3], out_h: i64, out_w: i64, align_corners: bool, dev: Device, kind: Kind) -> Tensor {
    let n = maps.len() as i64;
    let eye = Tensor::from_slice(&[1f32, 0., 0., 0., 1., 0.]).view([1, 2, 3]).to_device(dev).to_kind(kind);
    let base = Tensor::affine_grid_generator(&eye, [1, 1, out_h, out_w], align_corners).view([1, out_h * out_w, 2]);
    let ones = Tensor::ones([1, out_h * out_w, 1], (kind, dev));
    let homog = Tensor::cat(&[base, ones], 2); // (1, P, 3)
    let mats: Vec<f32> = maps.iter().flat_map(|m| m.iter().flatten().map(|&v| v as f32)).collect();
    let mats = Tensor::from_slice(&mats).view([n, 3, 3]).to_device(dev).to_kind(kind);
    let p = homog.matmul(&mats.transpose(1, 2)); // (N, P, 3)
    let xy = p.narrow(2, 0, 2) / p.narrow(2, 2, 1);
    xy.view([n, out_h, out_w, 2])
}

/// Smallest shrink factor `d` for which `shrink_first` resamples; fastai's is 1.
pub const MIN_PRESHRINK: f64 = 1.1;

/// fastai `_grid_sample`'s pre-shrink: with bilinear sampling, when the input is more
/// than twice the output (d = min(H/out_h, W/out_w)/2 > 1) and the maps zoom in by less
/// than d (z = 2/(max−min) of all grid coordinates), area-resize `x` by 1/d first.
///
/// Departure from fastai: kestrel skips it when d < [`MIN_PRESHRINK`] (1.1). There it
/// would take off less than 10 % of the resolution — for the book's 460 → 224 recipe,
/// d = 1.03: 460 → 448 px, no visible anti-aliasing — yet the non-integer area resize is
/// the most expensive step of the batch transforms on the CPU (170 ms of 380 ms for a
/// 64-image batch on 2 cores). Larger reductions (e.g. 460 → 128, d = 1.8) still get it.
fn shrink_first(x: &Tensor, maps: &[Mat3], out_h: i64, out_w: i64, s: Sampling) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    match preshrink_size(h, w, maps, out_h, out_w, s) {
        Some(size) => x.adaptive_avg_pool2d(size),
        None => x.shallow_clone(),
    }
}

/// The size (height, width) that [`resample`] area-shrinks an `h`×`w` batch to before
/// sampling it through `maps` onto `out_h`×`out_w` (fastai `_grid_sample`'s pre-shrink,
/// with kestrel's [`MIN_PRESHRINK`]), or `None` when it samples the batch as it is. The
/// ONNX export builds the same step into its graph.
pub fn preshrink_size(h: i64, w: i64, maps: &[Mat3], out_h: i64, out_w: i64, s: Sampling) -> Option<[i64; 2]> {
    if s.mode != Interpolation::Bilinear {
        return None;
    }
    let d = (h as f64 / out_h as f64).min(w as f64 / out_w as f64) / 2.0;
    if d < MIN_PRESHRINK {
        return None;
    }
    let edge = |n: i64| if s.align_corners { 1.0 } else { (n - 1) as f64 / n as f64 };
    let (ex, ey) = (edge(out_w), edge(out_h));
    let (mut mn, mut mx) = (f64::INFINITY, f64::NEG_INFINITY);
    for m in maps {
        for (u, v) in [(-ex, -ey), (-ex, ey), (ex, -ey), (ex, ey)] {
            let z = m[2][0] * u + m[2][1] * v + m[2][2];
            for row in &m[..2] {
                let c = (row[0] * u + row[1] * v + row[2]) / z;
                mn = mn.min(c);
                mx = mx.max(c);
            }
        }
    }
    let zoom = 1.0 / (mx - mn) * 2.0;
    let f = 1.0 / d;
    (d > zoom).then(|| [(h as f64 * f).floor() as i64, (w as f64 * f).floor() as i64])
}

/// True when `m` maps pixel centres of an `h`×`w` image exactly onto pixel centres of
/// the same image: a signed permutation without translation or perspective (a transpose
/// only for square images).
fn is_pixel_permutation(m: &Mat3, h: i64, w: i64) -> bool {
    let unit = |v: f64| v == 0.0 || v.abs() == 1.0;
    let lin = [m[0][0], m[0][1], m[1][0], m[1][1]];
    let diag = m[0][1] == 0.0 && m[1][0] == 0.0 && m[0][0] != 0.0 && m[1][1] != 0.0;
    let anti = m[0][0] == 0.0 && m[1][1] == 0.0 && m[0][1] != 0.0 && m[1][0] != 0.0 && h == w;
    lin.iter().all(|&v| unit(v)) && (diag || anti) && m[0][2] == 0.0 && m[1][2] == 0.0 && m[2] == [0.0, 0.0, 1.0]
}

/// Applies a pixel-permutation map to one (C, H, W) image with flips and a transpose.
fn permute_pixels(img: &Tensor, m: &Mat3) -> Tensor {
    if m[0][1] == 0.0 {
        // source x = m00·u, source y = m11·v.
        let mut dims = vec![];
        if m[1][1] < 0.0 {
            dims.push(1);
        }
        if m[0][0] < 0.0 {
            dims.push(2);
        }
        if dims.is_empty() { img.shallow_clone() } else { img.flip(&dims) }
    } else {
        // source x = m01·v (row), source y = m10·u (column): out[r, c] = in[±c, ±r].
        let t = img.transpose(1, 2);
        let mut dims = vec![];
        if m[0][1] < 0.0 {
            dims.push(1);
        }
        if m[1][0] < 0.0 {
            dims.push(2);
        }
        if dims.is_empty() { t.contiguous() } else { t.flip(&dims) }
    }
}
