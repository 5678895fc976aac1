//! A small CNN for tests, examples and quick experiments on small images.

use super::{Model, ParamInfo};
use tch::{Tensor, nn, nn::ModuleT};

/// `conv3×3(3→c1)-BN-ReLU-maxpool2 | conv3×3(c1→c2)-BN-ReLU-global-avg-pool | linear(c2→n_out)`,
/// in three parameter groups (0: first conv block, 1: second conv block, 2: head), so it
/// behaves like a vision learner's body/head split for freezing and discriminative lrs.
/// Input (N, 3, H, W) f32 with H, W ≥ 2; output logits (N, n_out). Variables are named
/// like PyTorch's `nn.Sequential` (`0.0.weight`, `0.1.running_mean`, …, `1.weight`).
pub struct SimpleCnn {
    vs: nn::VarStore,
    b1: nn::SequentialT,
    b2: nn::SequentialT,
    head: nn::Linear,
}

impl SimpleCnn {
    /// A randomly initialised network (PyTorch's default inits, drawn from torch's
    /// generator: seed it with `tch::manual_seed` for a repeatable model) on `device`.
    pub fn new(c1: i64, c2: i64, n_out: i64, device: tch::Device) -> Self {
        let vs = nn::VarStore::new(device);
        let p = vs.root();
        let conv = nn::ConvConfig { padding: 1, ..Default::default() };
        let b1 = nn::seq_t()
            .add(nn::conv2d(&p / "0" / "0", 3, c1, 3, conv))
            .add(nn::batch_norm2d(&p / "0" / "1", c1, Default::default()))
            .add_fn(|x| x.relu().max_pool2d_default(2));
        let b2 = nn::seq_t()
            .add(nn::conv2d(&p / "0" / "3", c1, c2, 3, conv))
            .add(nn::batch_norm2d(&p / "0" / "4", c2, Default::default()))
            .add_fn(|x| x.relu().adaptive_avg_pool2d([1, 1]).flatten(1, -1));
        let head = nn::linear(&p / "1", c2, n_out, Default::default());
        SimpleCnn { vs, b1, b2, head }
    }
}

impl Model for SimpleCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = self.b2.forward_t(&self.b1.forward_t(xs, train), train);
        h.apply(&self.head)
    }
    fn var_store(&self) -> &nn::VarStore { &self.vs }
    fn var_store_mut(&mut self) -> &mut nn::VarStore { &mut self.vs }
    fn params(&self) -> Vec<ParamInfo> {
        let mut names: Vec<String> = self.vs.variables().into_keys()
            .filter(|n| !n.ends_with("running_mean") && !n.ends_with("running_var")).collect();
        names.sort();
        names.into_iter().map(|name| {
            let group = if name.starts_with("0.0.") || name.starts_with("0.1.") { 0 } else if name.starts_with("0.") { 1 } else { 2 };
            let is_bn = name.starts_with("0.1.") || name.starts_with("0.4.");
            let is_bias = name.ends_with(".bias");
            ParamInfo { name, group, is_bn, is_bias }
        }).collect()
    }
    fn n_groups(&self) -> usize { 3 }
}
