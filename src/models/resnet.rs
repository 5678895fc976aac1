//! ResNet-18/34/50/101/152 exactly as torchvision builds them (`torchvision.models.resnet`,
//! "ResNet v1.5": the stride of a Bottleneck sits in its 3×3 conv), so a torchvision state
//! dict loads as-is.
//!
//! Parameter names follow torchvision: `conv1`, `bn1`, `layer1.0.conv1`, …,
//! `layer2.0.downsample.0` (1×1 conv) and `.1` (BatchNorm), `fc`. [`ResNet`] uses them
//! verbatim; the fastai learner model ([`crate::models::vision`]) stores the same body under
//! fastai's `nn.Sequential` indices (see [`BodyNames`]).

use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

use super::layers::{batch_norm, conv_no_bias, linear_default};

/// Where the body's parts live in the VarStore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyNames {
    /// torchvision names: `conv1`, `bn1`, `layer1`…`layer4`.
    Torchvision,
    /// fastai `create_body` indices (children of the cut model): `0` = conv1, `1` = bn1,
    /// `4`…`7` = layer1…layer4 (2 and 3 are the parameter-free ReLU and max-pool).
    Fastai,
}

impl BodyNames {
    fn parts(self) -> [&'static str; 6] {
        match self {
            BodyNames::Torchvision => ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"],
            BodyNames::Fastai => ["0", "1", "4", "5", "6", "7"],
        }
    }
}

/// torchvision's `nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`.
const CONV_INIT: nn::Init = nn::Init::Kaiming {
    dist: nn::init::NormalOrUniform::Normal,
    fan: nn::init::FanInOut::FanOut,
    non_linearity: nn::init::NonLinearity::ReLU,
};

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    conv_no_bias(p, c_in, c_out, k, stride, padding, 1, CONV_INIT)
}

/// BatchNorm epsilon of every ResNet BatchNorm (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    batch_norm(p, c, BN_EPS, 0.1)
}

/// A residual block: BasicBlock (two 3×3 convs) or Bottleneck (1×1, 3×3, 1×1 with 4×
/// expansion).
#[derive(Debug)]
struct Block {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Block {
    fn new(p: &nn::Path, c_in: i64, planes: i64, stride: i64, bottleneck: bool) -> Block {
        let (convs, c_out) = if bottleneck {
            let c_out = planes * 4;
            let convs = vec![
                (conv(p / "conv1", c_in, planes, 1, 1, 0), bn(p / "bn1", planes)),
                (conv(p / "conv2", planes, planes, 3, stride, 1), bn(p / "bn2", planes)),
                (conv(p / "conv3", planes, c_out, 1, 1, 0), bn(p / "bn3", c_out)),
            ];
            (convs, c_out)
        } else {
            let convs = vec![
                (conv(p / "conv1", c_in, planes, 3, stride, 1), bn(p / "bn1", planes)),
                (conv(p / "conv2", planes, planes, 3, 1, 1), bn(p / "bn2", planes)),
            ];
            (convs, planes)
        };
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            (conv(&d / "0", c_in, c_out, 1, stride, 0), bn(&d / "1", c_out))
        });
        Block { convs, downsample }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut out = xs.shallow_clone();
        for (i, (c, b)) in self.convs.iter().enumerate() {
            out = b.forward_t(&c.forward(&out), train);
            if i < last {
                out = out.relu_();
            }
        }
        let identity = match &self.downsample {
            Some((c, b)) => b.forward_t(&c.forward(xs), train),
            None => xs.shallow_clone(),
        };
        out += identity;
        out.relu_()
    }
}

/// The convolutional body of a ResNet: conv1 (7×7, stride 2), bn1, ReLU, max-pool (3×3,
/// stride 2), layer1…layer4 — torchvision's network without `avgpool` and `fc` (fastai
/// `create_body(resnet, cut=-2)`). Input (N, 3, H, W) → (N, [`ResNetBody::features`],
/// ⌈H/32⌉, ⌈W/32⌉).
#[derive(Debug)]
pub struct ResNetBody {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<Vec<Block>>,
    features: i64,
}

impl ResNetBody {
    /// Builds the body of ResNet-`depth` (18, 34, 50, 101, 152) under `p`, named as
    /// `names` says, initialised as torchvision (Kaiming-normal fan-out convs, BatchNorm
    /// weight 1 and bias 0; `zero_init_residual=False`).
    ///
    /// Errors: an unsupported depth.
    pub fn new(p: &nn::Path, depth: usize, names: BodyNames) -> crate::Result<ResNetBody> {
        let (bottleneck, counts): (bool, [usize; 4]) = match depth {
            18 => (false, [2, 2, 2, 2]),
            34 => (false, [3, 4, 6, 3]),
            50 => (true, [3, 4, 6, 3]),
            101 => (true, [3, 4, 23, 3]),
            152 => (true, [3, 8, 36, 3]),
            _ => anyhow::bail!("ResNet depth {depth} does not exist: use 18, 34, 50, 101 or 152"),
        };
        let n = names.parts();
        let conv1 = conv(p / n[0], 3, 64, 7, 2, 3);
        let bn1 = bn(p / n[1], 64);
        let expansion = if bottleneck { 4 } else { 1 };
        let mut c_in = 64;
        let mut layers = Vec::new();
        for (li, &count) in counts.iter().enumerate() {
            let planes = 64 << li;
            let lp = p / n[2 + li];
            let blocks = (0..count)
                .map(|bi| {
                    let stride = if bi == 0 && li > 0 { 2 } else { 1 };
                    let b = Block::new(&(&lp / bi), c_in, planes, stride, bottleneck);
                    c_in = planes * expansion;
                    b
                })
                .collect();
            layers.push(blocks);
        }
        Ok(ResNetBody { conv1, bn1, layers, features: c_in })
    }

    /// Channels of the output feature map: 512 (ResNet-18/34) or 2048 (50/101/152).
    pub fn features(&self) -> i64 {
        self.features
    }
}

impl ModuleT for ResNetBody {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = self.bn1.forward_t(&self.conv1.forward(xs), train).relu_();
        x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for layer in &self.layers {
            for block in layer {
                x = block.forward_t(&x, train);
            }
        }
        x
    }
}

/// torchvision's ResNet classifier: [`ResNetBody`], global average pool, `fc`
/// (Linear(features, num_classes), PyTorch's default init). Names as torchvision.
/// Input (N, 3, H, W) normalised with ImageNet stats → logits (N, num_classes).
#[derive(Debug)]
pub struct ResNet {
    body: ResNetBody,
    fc: nn::Linear,
}

impl ResNet {
    /// ResNet-`depth` with `num_classes` outputs under `p` (use the VarStore root for
    /// torchvision names). Errors: an unsupported depth.
    pub fn new(p: &nn::Path, depth: usize, num_classes: i64) -> crate::Result<ResNet> {
        let body = ResNetBody::new(p, depth, BodyNames::Torchvision)?;
        let fc = linear_default(p / "fc", body.features(), num_classes, true);
        Ok(ResNet { body, fc })
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = self.body.forward_t(xs, train);
        let x = x.mean_dim(&[-1i64, -2][..], false, Kind::Float);
        self.fc.forward(&x)
    }
}
