//! fastai's classifier head, `create_head(nf, n_out, lin_ftrs=[512], ps=0.5,
//! concat_pool=True)` (fastai/vision/learner.py), initialised as `add_head` does
//! (`apply_init(head, nn.init.kaiming_normal_)`).
//!
//! Layers, with their `nn.Sequential` index (the VarStore name under the head's path):
//! 0 AdaptiveConcatPool2d (max then average), 1 Flatten, 2 BatchNorm1d(2·nf),
//! 3 Dropout(0.25), 4 Linear(2·nf, 512, bias=False), 5 ReLU, 6 BatchNorm1d(512),
//! 7 Dropout(0.5), 8 Linear(512, n_out, bias=False).

use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

/// Hidden width of the head (fastai `lin_ftrs=[512]`).
pub const HIDDEN: i64 = 512;
/// Dropout before the last linear layer (fastai `ps=0.5`); the first one uses half.
pub const PS: f64 = 0.5;

/// Epsilon of the head's BatchNorm1d layers (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;

/// fastai `BatchNorm(nf, ndim=1)`: weight 1, bias 1e-3, eps 1e-5, momentum 0.1.
fn fastai_bn1d(p: nn::Path, c: i64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        eps: BN_EPS,
        momentum: 0.1,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(1e-3),
        ..Default::default()
    };
    nn::batch_norm1d(p, c, cfg)
}

/// Linear without bias, `nn.init.kaiming_normal_` (fan-in, gain √2): N(0, 2/fan_in).
fn kaiming_linear(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let cfg = nn::LinearConfig { ws_init: nn::init::DEFAULT_KAIMING_NORMAL, bs_init: None, bias: false };
    nn::linear(p, c_in, c_out, cfg)
}

/// `AdaptiveConcatPool2d` of fastai: (N, C, H, W) → (N, 2C), the global max of each
/// channel followed by its global mean (that order, as fastai's `torch.cat([mp, ap])`).
pub fn concat_pool(xs: &Tensor) -> Tensor {
    let flat = xs.flatten(2, -1);
    let (max, _) = flat.max_dim(-1, false);
    let avg = flat.mean_dim(-1, false, Kind::Float);
    Tensor::cat(&[max, avg], 1)
}

/// fastai's head: features (N, nf, H, W) of a body → logits (N, n_out).
#[derive(Debug)]
pub struct Head {
    bn1: nn::BatchNorm,
    lin1: nn::Linear,
    bn2: nn::BatchNorm,
    lin2: nn::Linear,
}

impl Head {
    /// The head for `nf` body channels and `n_out` classes under `p` (variables `2.*`,
    /// `4.weight`, `6.*`, `8.weight`). Parameters: 2·(2nf) + 2nf·512 + 2·512 + 512·n_out.
    pub fn new(p: &nn::Path, nf: i64, n_out: i64) -> Head {
        Head {
            bn1: fastai_bn1d(p / "2", 2 * nf),
            lin1: kaiming_linear(p / "4", 2 * nf, HIDDEN),
            bn2: fastai_bn1d(p / "6", HIDDEN),
            lin2: kaiming_linear(p / "8", HIDDEN, n_out),
        }
    }
}

impl ModuleT for Head {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = self.bn1.forward_t(&concat_pool(xs), train).dropout(PS / 2.0, train);
        let x = self.lin1.forward(&x).relu_();
        let x = self.bn2.forward_t(&x, train).dropout(PS, train);
        self.lin2.forward(&x)
    }
}
