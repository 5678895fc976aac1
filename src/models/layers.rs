//! Small layer constructors shared by the networks, with PyTorch's parameter names
//! (`weight`, `bias`, `running_mean`, `running_var`) and explicit initialisation.

use tch::nn;

/// A 2-d convolution without bias (`weight` of shape (c_out, c_in/groups, k, k)).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_no_bias(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    padding: i64,
    groups: i64,
    init: nn::Init,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig { stride, padding, groups, bias: false, ws_init: init, ..Default::default() };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// BatchNorm2d with weight 1, bias 0, running mean 0, running var 1 (PyTorch's reset),
/// `eps` and PyTorch-convention `momentum` (weight of the new batch statistic).
pub(crate) fn batch_norm(p: nn::Path, c: i64, eps: f64, momentum: f64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        eps,
        momentum,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, c, cfg)
}

/// PyTorch's default initialisation of a weight with `fan_in` inputs (`kaiming_uniform_`
/// with a = √5, i.e. U(−1/√fan_in, 1/√fan_in)); also its default bias init.
pub(crate) fn torch_default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

/// `nn.Linear(c_in, c_out, bias)` with PyTorch's default initialisation.
pub(crate) fn linear_default(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> nn::Linear {
    let init = torch_default_init(c_in);
    let cfg = nn::LinearConfig { ws_init: init, bs_init: bias.then_some(init), bias };
    nn::linear(p, c_in, c_out, cfg)
}
