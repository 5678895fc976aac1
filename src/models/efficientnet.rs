//! EfficientNet-Lite0…4 as the PyPI package `efficientnet-lite-pytorch` builds them (a port
//! of TensorFlow's `efficientnet/lite`): MBConv blocks without squeeze-excite, ReLU6,
//! BatchNorm eps 1e-3 and momentum 0.01 (TF's 0.99), TensorFlow "SAME" padding, stem (32
//! channels) and head (1280 channels) not scaled, first and last stage not repeated more.
//!
//! Parameter names are those of the PyPI `.pth` files: `_conv_stem.weight`, `_bn0.*`,
//! `_blocks.N._expand_conv.weight`, `_blocks.N._bn0.*`, `_blocks.N._depthwise_conv.weight`,
//! `_blocks.N._bn1.*`, `_blocks.N._project_conv.weight`, `_blocks.N._bn2.*`,
//! `_conv_head.weight`, `_bn1.*`, `_fc.weight`, `_fc.bias`.
//!
//! Padding: "SAME" is computed from the actual input size at every call (the reference's
//! `Conv2dDynamicSamePadding`; TensorFlow's semantics): total padding
//! `max((⌈n/s⌉−1)·s + k − n, 0)`, the extra pixel (if odd) on the bottom/right. At the
//! 224/240/… sizes the weights were trained at, this equals the reference's static padding.

use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

use super::layers::{batch_norm, conv_no_bias, linear_default, torch_default_init};
use super::lean;

/// Width, depth, resolution and classifier dropout of Lite0…Lite4 (efficientnet_params).
const LITE_PARAMS: [(f64, f64, i64, f64); 5] =
    [(1.0, 1.0, 224, 0.2), (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3), (1.2, 1.4, 280, 0.3), (1.4, 1.8, 300, 0.3)];

/// Base stages (repeats, kernel, stride, expand ratio, in, out) of EfficientNet-B0.
const STAGES: [(usize, i64, i64, i64, i64, i64); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Drop-connect (stochastic depth) rate of the last block; block i uses rate·i/n_blocks.
const DROP_CONNECT_RATE: f64 = 0.2;

/// Channels of the head conv (not scaled in the Lite models).
pub const HEAD_CHANNELS: i64 = 1280;

fn round_filters(filters: i64, width: f64) -> i64 {
    let f = filters as f64 * width;
    let mut new = (((f + 4.0) as i64) / 8 * 8).max(8);
    if (new as f64) < 0.9 * f {
        new += 8;
    }
    new
}

fn round_repeats(repeats: usize, depth: f64) -> usize {
    (depth * repeats as f64).ceil() as usize
}

/// BatchNorm epsilon of every EfficientNet-Lite BatchNorm (TensorFlow's 1e-3).
pub const BN_EPS: f64 = 1e-3;

/// BatchNorm momentum of every EfficientNet-Lite BatchNorm (PyTorch's convention: TF's 0.99
/// decay is 0.01).
const BN_MOMENTUM: f64 = 0.01;

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    batch_norm(p, c, BN_EPS, BN_MOMENTUM)
}

/// ReLU6 of BatchNorm `bn` on `x`: [`lean::bn_relu6`] with EfficientNet-Lite's momentum and
/// eps.
fn bn_relu6(bn: &nn::BatchNorm, x: &Tensor, train: bool) -> Tensor {
    lean::bn_relu6(bn, x, train, BN_MOMENTUM, BN_EPS)
}

/// One MBConv block of EfficientNet-Lite as the stage table lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    /// Depthwise kernel size (3 or 5).
    pub kernel: i64,
    /// Depthwise stride (1 or 2).
    pub stride: i64,
    /// Expansion ratio of the 1×1 expand conv (1: no expand conv).
    pub expand: i64,
    /// Input channels.
    pub c_in: i64,
    /// Output channels.
    pub c_out: i64,
}

impl BlockSpec {
    /// True when the block adds its input to its output (stride 1, same channels).
    pub fn skip(&self) -> bool {
        self.stride == 1 && self.c_in == self.c_out
    }
}

/// The MBConv blocks of EfficientNet-Lite`variant` (0…4) in order, and the index one past
/// the last block of each of the 7 stages.
///
/// Errors: a variant outside 0…4.
pub fn block_specs(variant: usize) -> crate::Result<(Vec<BlockSpec>, Vec<usize>)> {
    let Some(&(width, depth, _, _)) = LITE_PARAMS.get(variant) else {
        anyhow::bail!("EfficientNet-Lite{variant} does not exist: use 0, 1, 2, 3 or 4")
    };
    let mut specs = Vec::new();
    let mut stage_ends = Vec::new();
    for (si, &(r, k, s, e, i, o)) in STAGES.iter().enumerate() {
        let fixed = si == 0 || si == STAGES.len() - 1;
        let repeats = if fixed { r } else { round_repeats(r, depth) };
        let mut c_in = if si == 0 { 32 } else { round_filters(i, width) };
        let c_out = round_filters(o, width);
        for j in 0..repeats {
            let stride = if j == 0 { s } else { 1 };
            specs.push(BlockSpec { kernel: k, stride, expand: e, c_in, c_out });
            c_in = c_out;
        }
        stage_ends.push(specs.len());
    }
    Ok((specs, stage_ends))
}

/// TensorFlow "SAME" padding of one axis of `n` pixels for a `k`-wide kernel with
/// `stride`: the total `max((⌈n/stride⌉ − 1)·stride + k − n, 0)`; the output has
/// ⌈n/stride⌉ pixels and the extra pixel of an odd total goes to the bottom/right.
pub fn same_padding(n: i64, k: i64, stride: i64) -> i64 {
    let out = (n + stride - 1) / stride;
    ((out - 1) * stride + k - n).max(0)
}

/// A convolution with TensorFlow "SAME" padding, no bias.
#[derive(Debug)]
struct SameConv {
    ws: Tensor,
    k: i64,
    stride: i64,
    groups: i64,
}

impl SameConv {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> SameConv {
        let init = torch_default_init(c_in / groups * k * k);
        let conv = conv_no_bias(p, c_in, c_out, k, stride, 0, groups, init);
        SameConv { ws: conv.ws, k, stride, groups }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let size = xs.size();
        let (ph, pw) = (same_padding(size[2], self.k, self.stride), same_padding(size[3], self.k, self.stride));
        if ph % 2 == 0 && pw % 2 == 0 {
            // Symmetric: let the convolution pad (no extra copy).
            lean::conv2d(xs, &self.ws, self.stride, [ph / 2, pw / 2], self.groups)
        } else {
            let padded = xs.constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2]);
            lean::conv2d(&padded, &self.ws, self.stride, [0, 0], self.groups)
        }
    }
}

/// Mobile inverted bottleneck block (MBConv) without squeeze-excite.
#[derive(Debug)]
struct MbConv {
    expand: Option<(SameConv, nn::BatchNorm)>,
    depthwise: SameConv,
    bn1: nn::BatchNorm,
    project: SameConv,
    bn2: nn::BatchNorm,
    skip: bool,
    drop_connect: f64,
}

impl MbConv {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = match &self.expand {
            Some((c, b)) => bn_relu6(b, &c.forward(xs), train),
            None => xs.shallow_clone(),
        };
        x = bn_relu6(&self.bn1, &self.depthwise.forward(&x), train);
        x = self.bn2.forward_t(&self.project.forward(&x), train);
        if !self.skip {
            return x;
        }
        if train && self.drop_connect > 0.0 {
            let keep = 1.0 - self.drop_connect;
            let n = x.size()[0];
            let mask = (Tensor::rand([n, 1, 1, 1], (x.kind(), x.device())) + keep).floor();
            x = x / keep * mask;
        }
        x + xs
    }
}

/// The convolutional part of EfficientNet-Lite (the reference's `extract_features`):
/// stem conv (3×3, stride 2, 32 channels), `_bn0`, ReLU6, the MBConv blocks, `_conv_head`
/// (1×1, 1280 channels), `_bn1`, ReLU6. Input (N, 3, H, W) → (N, 1280, ⌈H/32⌉, ⌈W/32⌉).
#[derive(Debug)]
pub struct LiteBody {
    stem: SameConv,
    bn0: nn::BatchNorm,
    blocks: Vec<MbConv>,
    head: SameConv,
    bn1: nn::BatchNorm,
    stage_ends: Vec<usize>,
}

impl LiteBody {
    /// EfficientNet-Lite`variant` (0…4) under `p` with the `.pth` parameter names,
    /// initialised as PyTorch's defaults (what the reference does before loading weights).
    ///
    /// Errors: a variant outside 0…4.
    pub fn new(p: &nn::Path, variant: usize) -> crate::Result<LiteBody> {
        let (specs, stage_ends) = block_specs(variant)?;
        let stem = SameConv::new(p / "_conv_stem", 3, 32, 3, 2, 1);
        let bn0 = bn(p / "_bn0", 32);
        let n_blocks = specs.len();
        let blocks_p = p / "_blocks";
        let blocks = specs
            .iter()
            .enumerate()
            .map(|(idx, b)| {
                let BlockSpec { kernel: k, stride, expand: e, c_in, c_out } = *b;
                let bp = &blocks_p / idx;
                let mid = c_in * e;
                let expand =
                    (e != 1).then(|| (SameConv::new(&bp / "_expand_conv", c_in, mid, 1, 1, 1), bn(&bp / "_bn0", mid)));
                MbConv {
                    expand,
                    depthwise: SameConv::new(&bp / "_depthwise_conv", mid, mid, k, stride, mid),
                    bn1: bn(&bp / "_bn1", mid),
                    project: SameConv::new(&bp / "_project_conv", mid, c_out, 1, 1, 1),
                    bn2: bn(&bp / "_bn2", c_out),
                    skip: b.skip(),
                    drop_connect: DROP_CONNECT_RATE * idx as f64 / n_blocks as f64,
                }
            })
            .collect();
        let last = specs.last().map(|s| s.c_out).unwrap_or(32);
        let head = SameConv::new(p / "_conv_head", last, HEAD_CHANNELS, 1, 1, 1);
        let bn1 = bn(p / "_bn1", HEAD_CHANNELS);
        Ok(LiteBody { stem, bn0, blocks, head, bn1, stage_ends })
    }

    /// Number of MBConv blocks (16 for Lite0, 17 Lite1, 20 Lite2, 23 Lite3, 30 Lite4).
    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Index one past the last block of each of the 7 stages (Lite0: 1, 3, 5, 8, 11, 15, 16).
    pub fn stage_ends(&self) -> &[usize] {
        &self.stage_ends
    }
}

impl ModuleT for LiteBody {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = bn_relu6(&self.bn0, &self.stem.forward(xs), train);
        for b in &self.blocks {
            x = b.forward_t(&x, train);
        }
        bn_relu6(&self.bn1, &self.head.forward(&x), train)
    }
}

/// The reference's full EfficientNet-Lite classifier: [`LiteBody`], global average pool,
/// dropout (0.2 for Lite0/1, 0.3 for Lite2–4), `_fc` (Linear(1280, num_classes)).
/// Input (N, 3, H, W) normalised with [`crate::models::meta::TF_LITE_STATS`] → logits
/// (N, num_classes).
#[derive(Debug)]
pub struct EfficientNetLite {
    body: LiteBody,
    fc: nn::Linear,
    dropout: f64,
}

impl EfficientNetLite {
    /// Lite`variant` (0…4) with `num_classes` outputs under `p` (the VarStore root for the
    /// `.pth` names). Errors: a variant outside 0…4.
    pub fn new(p: &nn::Path, variant: usize, num_classes: i64) -> crate::Result<EfficientNetLite> {
        let body = LiteBody::new(p, variant)?;
        let fc = linear_default(p / "_fc", HEAD_CHANNELS, num_classes, true);
        Ok(EfficientNetLite { body, fc, dropout: LITE_PARAMS[variant].3 })
    }
}

impl ModuleT for EfficientNetLite {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = self.body.forward_t(xs, train);
        let x = x.mean_dim(&[-1i64, -2][..], false, Kind::Float).dropout(self.dropout, train);
        self.fc.forward(&x)
    }
}
