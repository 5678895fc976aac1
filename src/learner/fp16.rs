//! Mixed precision (fastai `MixedPrecision`, PyTorch `torch.amp.GradScaler`) and the
//! channels-last memory layout.

use super::Learner;
use tch::{Device, Tensor};

/// Dynamic loss scaling (PyTorch `GradScaler` defaults): the loss is multiplied by
/// `scale` before backward; before the step the gradients are divided by it and checked.
/// A step with an inf/NaN gradient is skipped and the scale halves; after
/// `growth_interval` (2000) clean steps in a row the scale doubles.
#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
    clean_steps: u32,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler { scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000, clean_steps: 0 }
    }
}

impl GradScaler {
    /// A scaler with PyTorch's defaults: initial scale 2^16, ×2 after 2000 clean steps, ×0.5 on overflow.
    pub fn new() -> Self { Self::default() }

    /// The current loss scale.
    pub fn scale(&self) -> f64 { self.scale }

    /// Unscales `grads` in place (÷ scale), then updates the scale. Returns true when all
    /// gradients are finite and the optimizer should step, false when the step must be skipped.
    pub fn unscale_and_update(&mut self, grads: &[Tensor]) -> bool {
        let inv = 1.0 / self.scale;
        let mut finite = true;
        tch::no_grad(|| {
            for g in grads {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_scalar_(inv);
                if finite && !bool::try_from(g.isfinite().all()).unwrap_or(false) { finite = false; }
            }
        });
        if finite {
            self.clean_steps += 1;
            if self.clean_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.clean_steps = 0;
            }
        } else {
            self.scale *= self.backoff_factor;
            self.clean_steps = 0;
        }
        finite
    }
}

/// `x` (N, C, H, W) with channels-last strides (same values and shape; the layout
/// PyTorch's `memory_format=torch.channels_last` gives).
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

impl Learner {
    /// fastai `to_fp16()`: forward passes under CUDA autocast (float16) with dynamic loss
    /// scaling ([`GradScaler`]); weights stay float32 (the master copy the optimizer updates).
    ///
    /// Errors: the model is not on a CUDA device — fp16 mixed precision needs a GPU. On
    /// the CPU, bfloat16 autocast (PyTorch `torch.autocast("cpu")`, `--bf16`) would be
    /// the alternative, but the tch bindings only expose CUDA autocast, so kestrel trains
    /// in float32 there.
    pub fn to_fp16(&mut self) -> crate::Result<()> {
        let dev = self.model.var_store().device();
        anyhow::ensure!(matches!(dev, Device::Cuda(_)),
            "fp16 mixed precision needs a CUDA GPU, but the model is on {dev:?}; on the CPU train in float32 \
             (--bf16 would use bfloat16 autocast, which kestrel's libtorch bindings do not expose on the CPU)");
        self.scaler = Some(GradScaler::new());
        Ok(())
    }

    /// fastai `to_fp32()`: back to plain float32 training.
    pub fn to_fp32(&mut self) { self.scaler = None; }

    /// Stores 4-D weights and feeds input batches in channels-last layout (PyTorch
    /// `memory_format=torch.channels_last`), which is faster for convolutions on many
    /// CPUs and GPUs. Values, shapes and names are unchanged.
    pub fn to_channels_last(&mut self) {
        tch::no_grad(|| {
            for (_, mut v) in self.model.var_store().variables() {
                if v.dim() == 4 {
                    let cl = channels_last(&v.detach());
                    v.set_data(&cl);
                }
            }
        });
        self.channels_last = true;
    }
}
