//! The ONNX graph of a kestrel vision model in evaluation mode: the in-graph part of the
//! validation preprocessing, the body (ResNet or EfficientNet-Lite) with every BatchNorm
//! folded into its convolution, and fastai's head with its BatchNorm1d layers folded into
//! the linear layers (Dropout is the identity in evaluation and is left out).

use super::graph::{Attr, GraphBuilder};
use super::proto::data_type;
use crate::models::efficientnet::{self, block_specs, same_padding};
use crate::models::{Arch, head, resnet};
use crate::transforms::Interpolation;
use crate::transforms::affine::{Mat3, Sampling, preshrink_size};
use anyhow::{Context, bail, ensure};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// A model's variables by VarStore name (weights and BatchNorm buffers).
pub(super) struct Weights(pub HashMap<String, Tensor>);

impl Weights {
    /// Shape and values (as f64, row-major) of variable `name`.
    fn get(&self, name: &str) -> crate::Result<(Vec<i64>, Vec<f64>)> {
        let t = self.0.get(name).with_context(|| format!("the model has no variable '{name}'"))?;
        let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Double).contiguous();
        Ok((t.size(), Vec::<f64>::try_from(t.flatten(0, -1))?))
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// BatchNorm `prefix` in evaluation as `y = x·scale + shift` per channel.
    fn bn(&self, prefix: &str, eps: f64) -> crate::Result<(Vec<f64>, Vec<f64>)> {
        let (_, gamma) = self.get(&format!("{prefix}.weight"))?;
        let (_, beta) = self.get(&format!("{prefix}.bias"))?;
        let (_, mean) = self.get(&format!("{prefix}.running_mean"))?;
        let (_, var) = self.get(&format!("{prefix}.running_var"))?;
        let scale: Vec<f64> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let shift = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        Ok((scale, shift))
    }
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Emits nodes into a [`GraphBuilder`] from a model's [`Weights`].
pub(super) struct Emitter<'a> {
    /// The graph under construction.
    pub g: &'a mut GraphBuilder,
    /// The model's variables.
    pub w: &'a Weights,
}

impl Emitter<'_> {
    /// `conv` (no bias) followed by BatchNorm `bn`, folded: one `Conv` with a bias.
    /// `pads` are ONNX's [top, left, bottom, right].
    fn conv_bn(&mut self, x: &str, conv: &str, bn: &str, eps: f64, stride: i64, pads: [i64; 4], groups: i64) -> crate::Result<String> {
        let (shape, w) = self.w.get(&format!("{conv}.weight"))?;
        ensure!(shape.len() == 4 && shape[2] == shape[3], "{conv}.weight: expected a square 2-d kernel, got shape {shape:?}");
        let (scale, shift) = self.w.bn(bn, eps)?;
        ensure!(scale.len() as i64 == shape[0], "{bn}: {} channels for a convolution with {} outputs", scale.len(), shape[0]);
        let per_out = w.len() / shape[0] as usize;
        let folded: Vec<f32> = w.iter().enumerate().map(|(i, v)| (v * scale[i / per_out]) as f32).collect();
        let wn = self.g.float(&format!("{conv}.weight"), &shape, &folded);
        let bn_ = self.g.float(&format!("{conv}.bias"), &[shape[0]], &f32s(&shift));
        let k = shape[2];
        Ok(self.g.node(
            "Conv",
            &[x, &wn, &bn_],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![stride, stride])),
                ("pads", Attr::Ints(pads.to_vec())),
                ("dilations", Attr::Ints(vec![1, 1])),
                ("group", Attr::Int(groups)),
            ],
            None,
        ))
    }

    fn relu(&mut self, x: &str) -> String {
        self.g.node("Relu", &[x], vec![], None)
    }

    /// ReLU6 as ONNX `Clip` with its min and max as inputs (opset ≥ 11).
    fn relu6(&mut self, x: &str) -> String {
        let lo = self.g.float("clip_min", &[], &[0.0]);
        let hi = self.g.float("clip_max", &[], &[6.0]);
        self.g.node("Clip", &[x, &lo, &hi], vec![], None)
    }

    fn add(&mut self, a: &str, b: &str) -> String {
        self.g.node("Add", &[a, b], vec![], None)
    }

    /// The validation batch transform inside the graph: `image` (N, 3, presize, presize)
    /// `u8` → float, fastai's pre-shrink when kestrel's resample does one (exact
    /// adaptive average pooling as two matrix products), bilinear resize to `size` with
    /// grid_sample's coordinates (`align_corners` → ONNX `align_corners`, else
    /// `half_pixel`), then `x/255` normalised with `mean`/`std`. Returns (N, 3, size, size) f32.
    ///
    /// Errors: a presize smaller than size, a sampling mode other than bilinear, or a
    /// validation map that is not the identity.
    pub fn preprocess(&mut self, image: &str, presize: i64, size: i64, map: &Mat3, s: Sampling, mean: [f64; 3], std: [f64; 3]) -> crate::Result<String> {
        ensure!(presize >= size, "the presize {presize} is smaller than the model input size {size}");
        let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        ensure!(
            map.iter().flatten().zip(identity.iter().flatten()).all(|(a, b)| (a - b).abs() < 1e-12),
            "the validation batch transform is not a plain resize (map {map:?}); the ONNX export supports square presized items"
        );
        let mut x = self.g.node("Cast", &[image], vec![("to", Attr::Int(data_type::FLOAT as i64))], None);
        let mut cur = presize;
        if presize != size {
            if s.mode != Interpolation::Bilinear {
                bail!("the model's batch transform samples with {:?}; the ONNX export supports bilinear", s.mode);
            }
            if let Some([ph, pw]) = preshrink_size(presize, presize, &[*map], size, size, s) {
                ensure!(ph == pw, "non-square pre-shrink {ph}x{pw}");
                let a = adaptive_avg_matrix(presize, ph);
                let at: Vec<f32> = (0..presize as usize)
                    .flat_map(|j| (0..ph as usize).map(move |i| (i, j)))
                    .map(|(i, j)| a[i * presize as usize + j])
                    .collect();
                let a_n = self.g.float("preshrink_rows", &[ph, presize], &a);
                let at_n = self.g.float("preshrink_cols", &[presize, ph], &at);
                x = self.g.node("MatMul", &[&x, &at_n], vec![], None);
                x = self.g.node("MatMul", &[&a_n, &x], vec![], None);
                cur = ph;
            }
            if cur != size {
                let shape = self.g.node("Shape", &[&x], vec![], None);
                let (st, en) = (self.g.ints("zero", &[0]), self.g.ints("two", &[2]));
                let nc = self.g.node("Slice", &[&shape, &st, &en], vec![], None);
                let hw = self.g.ints("size", &[size, size]);
                let sizes = self.g.node("Concat", &[&nc, &hw], vec![("axis", Attr::Int(0))], None);
                let ctm = if s.align_corners { "align_corners" } else { "half_pixel" };
                x = self.g.node(
                    "Resize",
                    &[&x, "", "", &sizes],
                    vec![("mode", Attr::Str("linear")), ("coordinate_transformation_mode", Attr::Str(ctm))],
                    None,
                );
            }
        }
        let a: Vec<f32> = (0..3).map(|c| (1.0 / 255.0 / std[c]) as f32).collect();
        let b: Vec<f32> = (0..3).map(|c| (-mean[c] / std[c]) as f32).collect();
        let a_n = self.g.float("norm_scale", &[1, 3, 1, 1], &a);
        let b_n = self.g.float("norm_shift", &[1, 3, 1, 1], &b);
        x = self.g.node("Mul", &[&x, &a_n], vec![], None);
        Ok(self.g.node("Add", &[&x, &b_n], vec![], None))
    }

    /// The body of `arch` (VarStore names under `0.`) on a normalised (N, 3, size, size)
    /// input; returns the feature map.
    pub fn body(&mut self, arch: Arch, x: &str, size: i64) -> crate::Result<String> {
        match (arch.resnet_depth(), arch.lite_variant()) {
            (Some(_), _) => self.resnet_body(x),
            (_, Some(v)) => self.lite_body(x, v, size),
            _ => bail!("the ONNX export does not know architecture {arch}"),
        }
    }

    /// torchvision's ResNet body, blocks read from the variables (fastai indices).
    fn resnet_body(&mut self, x: &str) -> crate::Result<String> {
        let eps = resnet::BN_EPS;
        let x = self.conv_bn(x, "0.0", "0.1", eps, 2, [3; 4], 1)?;
        let x = self.relu(&x);
        let mut x = self.g.node(
            "MaxPool",
            &[&x],
            vec![("kernel_shape", Attr::Ints(vec![3, 3])), ("strides", Attr::Ints(vec![2, 2])), ("pads", Attr::Ints(vec![1; 4]))],
            None,
        );
        for layer in 4..=7 {
            let mut b = 0;
            while self.w.has(&format!("0.{layer}.{b}.conv1.weight")) {
                let p = format!("0.{layer}.{b}");
                let bottleneck = self.w.has(&format!("{p}.conv3.weight"));
                let stride = if b == 0 && layer > 4 { 2 } else { 1 };
                let n = if bottleneck { 3 } else { 2 };
                let strided = if bottleneck { 2 } else { 1 };
                let mut out = x.clone();
                for i in 1..=n {
                    let (shape, _) = self.w.get(&format!("{p}.conv{i}.weight"))?;
                    let pad = shape[2] / 2;
                    let s = if i == strided { stride } else { 1 };
                    out = self.conv_bn(&out, &format!("{p}.conv{i}"), &format!("{p}.bn{i}"), eps, s, [pad; 4], 1)?;
                    if i < n {
                        out = self.relu(&out);
                    }
                }
                let identity = if self.w.has(&format!("{p}.downsample.0.weight")) {
                    self.conv_bn(&x, &format!("{p}.downsample.0"), &format!("{p}.downsample.1"), eps, stride, [0; 4], 1)?
                } else {
                    x.clone()
                };
                let sum = self.add(&out, &identity);
                x = self.relu(&sum);
                b += 1;
            }
            ensure!(b > 0, "the model has no ResNet layer 0.{layer} (variables 0.{layer}.0.*)");
        }
        Ok(x)
    }

    /// EfficientNet-Lite's body with TensorFlow "SAME" padding computed for the input
    /// size (as kestrel computes it at every call).
    fn lite_body(&mut self, x: &str, variant: usize, size: i64) -> crate::Result<String> {
        let eps = efficientnet::BN_EPS;
        let mut n = size;
        let same = |n: &mut i64, k: i64, s: i64| {
            let p = same_padding(*n, k, s);
            *n = (*n + s - 1) / s;
            [p / 2, p / 2, p - p / 2, p - p / 2]
        };
        let pads = same(&mut n, 3, 2);
        let x = self.conv_bn(x, "0._conv_stem", "0._bn0", eps, 2, pads, 1)?;
        let mut x = self.relu6(&x);
        let (specs, _) = block_specs(variant)?;
        for (i, b) in specs.iter().enumerate() {
            let p = format!("0._blocks.{i}");
            let input = x.clone();
            if b.expand != 1 {
                x = self.conv_bn(&x, &format!("{p}._expand_conv"), &format!("{p}._bn0"), eps, 1, [0; 4], 1)?;
                x = self.relu6(&x);
            }
            let mid = b.c_in * b.expand;
            let pads = same(&mut n, b.kernel, b.stride);
            x = self.conv_bn(&x, &format!("{p}._depthwise_conv"), &format!("{p}._bn1"), eps, b.stride, pads, mid)?;
            x = self.relu6(&x);
            x = self.conv_bn(&x, &format!("{p}._project_conv"), &format!("{p}._bn2"), eps, 1, [0; 4], 1)?;
            if b.skip() {
                x = self.add(&x, &input);
            }
        }
        let x = self.conv_bn(&x, "0._conv_head", "0._bn1", eps, 1, [0; 4], 1)?;
        Ok(self.relu6(&x))
    }

    /// fastai's head (VarStore names under `1.`): AdaptiveConcatPool2d as GlobalMaxPool +
    /// GlobalAveragePool + Concat (max first), Flatten, then BatchNorm1d → Linear → ReLU →
    /// BatchNorm1d → Linear with each BatchNorm folded into the Linear after it. Writes
    /// the logits (N, n_out) to `logits`.
    pub fn head(&mut self, x: &str, logits: &str) -> crate::Result<()> {
        let mp = self.g.node("GlobalMaxPool", &[x], vec![], None);
        let ap = self.g.node("GlobalAveragePool", &[x], vec![], None);
        let cat = self.g.node("Concat", &[&mp, &ap], vec![("axis", Attr::Int(1))], None);
        let flat = self.g.node("Flatten", &[&cat], vec![("axis", Attr::Int(1))], None);
        let h = self.bn_linear(&flat, "1.2", "1.4", None)?;
        let h = self.relu(&h);
        self.bn_linear(&h, "1.6", "1.8", Some(logits))?;
        Ok(())
    }

    /// BatchNorm1d `bn` then Linear `lin` (no bias) as one `Gemm`: W·diag(scale), W·shift.
    fn bn_linear(&mut self, x: &str, bn: &str, lin: &str, out: Option<&str>) -> crate::Result<String> {
        let (shape, w) = self.w.get(&format!("{lin}.weight"))?;
        ensure!(shape.len() == 2, "{lin}.weight: expected a matrix, got shape {shape:?}");
        let (o, i) = (shape[0] as usize, shape[1] as usize);
        let (scale, shift) = self.w.bn(bn, head::BN_EPS)?;
        ensure!(scale.len() == i, "{bn}: {} channels before a linear layer with {i} inputs", scale.len());
        let folded: Vec<f32> = w.iter().enumerate().map(|(k, v)| (v * scale[k % i]) as f32).collect();
        let bias: Vec<f32> = (0..o).map(|r| (0..i).map(|c| w[r * i + c] * shift[c]).sum::<f64>() as f32).collect();
        let wn = self.g.float(&format!("{lin}.weight"), &shape, &folded);
        let bn_ = self.g.float(&format!("{lin}.bias"), &[o as i64], &bias);
        Ok(self.g.node("Gemm", &[x, &wn, &bn_], vec![("transB", Attr::Int(1))], out))
    }
}

/// PyTorch `adaptive_avg_pool2d`'s averaging along one axis as an (out, n) row-major
/// matrix: output i averages inputs ⌊i·n/out⌋ .. ⌈(i+1)·n/out⌉.
fn adaptive_avg_matrix(n: i64, out: i64) -> Vec<f32> {
    let mut a = vec![0f32; (out * n) as usize];
    for i in 0..out {
        let start = (i * n) / out;
        let end = ((i + 1) * n + out - 1) / out;
        for j in start..end {
            a[(i * n + j) as usize] = 1.0 / (end - start) as f32;
        }
    }
    a
}
