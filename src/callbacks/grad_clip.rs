//! fastai `GradientClip`.

use super::Callback;
use crate::learner::Learner;
use tch::Tensor;

/// Clips the global norm of the gradients to `max_norm` before each step (fastai
/// `GradientClip`, PyTorch `clip_grad_norm_`): with `total` the `norm_type`-norm of all
/// gradients, every gradient is multiplied by `min(1, max_norm / (total + 1e-6))`.
#[derive(Debug, Clone)]
pub struct GradientClip {
    /// Largest allowed norm (fastai default 1.0).
    pub max_norm: f64,
    /// The p of the p-norm (2.0).
    pub norm_type: f64,
}

impl Default for GradientClip {
    fn default() -> Self { GradientClip { max_norm: 1.0, norm_type: 2.0 } }
}

impl Callback for GradientClip {
    fn name(&self) -> String { "GradientClip".into() }
    fn order(&self) -> i32 { 11 }
    fn before_step(&mut self, l: &mut Learner) -> crate::Result<()> {
        let grads: Vec<Tensor> = l.opt.groups.iter().flatten().map(|p| p.tensor.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() { return Ok(()); }
        tch::no_grad(|| {
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm_scalaropt_dim(self.norm_type, [0i64; 0].as_slice(), false)).collect();
            let total = Tensor::stack(&norms, 0).norm_scalaropt_dim(self.norm_type, [0i64; 0].as_slice(), false);
            let coef = (total + 1e-6).reciprocal().g_mul_scalar(self.max_norm).clamp_max(1.0);
            for g in &grads {
                let _ = g.shallow_clone().g_mul_(&coef);
            }
        });
        Ok(())
    }
}
