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
    /// Errors: the model is not on a CUDA device — fp16 mixed precision needs a GPU; on
    /// the CPU, [`Learner::to_bf16`] (`--bf16`) runs the forward pass under bfloat16
    /// autocast instead (float32 weights, no loss scaling needed).
    pub fn to_fp16(&mut self) -> crate::Result<()> {
        let dev = self.model.var_store().device();
        anyhow::ensure!(matches!(dev, Device::Cuda(_)),
            "fp16 mixed precision needs a CUDA GPU, but the model is on {dev:?}; on the CPU use --precision bf16 \
             (to_bf16: bfloat16 autocast of the forward pass with float32 weights) or train in float32");
        self.precision = Precision::Fp16;
        self.scaler = Some(GradScaler::new());
        Ok(())
    }

    /// bfloat16 mixed precision on the CPU (PyTorch `torch.autocast("cpu", torch.bfloat16)`):
    /// convolutions and matrix products of the forward pass run in bfloat16, weights,
    /// gradients and the optimizer stay float32; bfloat16 has float32's range, so no loss
    /// scaling. On CUDA this is CUDA autocast with its default (float16) and loss scaling,
    /// as [`Learner::to_fp16`].
    ///
    /// Errors: the platform's libtorch has no CPU autocast entry point kestrel can call
    /// (Windows builds).
    pub fn to_bf16(&mut self) -> crate::Result<()> {
        if matches!(self.model.var_store().device(), Device::Cuda(_)) { return self.to_fp16(); }
        anyhow::ensure!(cpu_autocast::AVAILABLE, "bfloat16 CPU autocast is not available in this build (Windows libtorch)");
        self.precision = Precision::Bf16Cpu;
        self.scaler = None;
        Ok(())
    }

    /// fastai `to_fp32()`: back to plain float32 training.
    pub fn to_fp32(&mut self) { self.scaler = None; self.precision = Precision::Fp32; }

    /// Switches to `p`: [`Learner::to_fp32`], [`Learner::to_fp16`] or [`Learner::to_bf16`].
    ///
    /// Errors: as those (fp16 off CUDA, bf16 without CPU autocast).
    pub fn set_precision(&mut self, p: Precision) -> crate::Result<()> {
        match p {
            Precision::Fp32 => { self.to_fp32(); Ok(()) }
            Precision::Fp16 => self.to_fp16(),
            Precision::Bf16Cpu => self.to_bf16(),
        }
    }

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

/// The numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in float32.
    #[default]
    Fp32,
    /// CUDA autocast (float16) with loss scaling.
    Fp16,
    /// CPU autocast to bfloat16.
    Bf16Cpu,
}

impl Precision {
    /// The name `--precision` takes and the model file and report record: `fp32`,
    /// `fp16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self { Precision::Fp32 => "fp32", Precision::Fp16 => "fp16", Precision::Bf16Cpu => "bf16" }
    }

    /// What `--precision auto` picks on `device`: fp16 with loss scaling on CUDA (fastai
    /// `to_fp16`), bf16 autocast on a CPU with native bfloat16 arithmetic
    /// ([`cpu_has_native_bf16`]), else fp32. Numerics then depend on the machine: the
    /// choice is recorded in the model file and report.
    pub fn auto(device: Device) -> Precision {
        match device {
            Device::Cuda(_) => Precision::Fp16,
            Device::Cpu if cpu_has_native_bf16() && cpu_autocast::AVAILABLE => Precision::Bf16Cpu,
            _ => Precision::Fp32,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.name()) }
}

/// True when this CPU computes bfloat16 natively — AVX512-BF16 or AMX-BF16 (CPUID leaf 7),
/// with AVX-512 state enabled by the OS — so that bfloat16 autocast is faster than float32
/// (oneDNN's bf16 kernels). Without them PyTorch emulates bfloat16 and runs slower.
/// Always false off x86-64.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::is_x86_feature_detected!("avx512f") { return false; }
        // SAFETY: CPUID is available on every x86-64 CPU; leaf 7 is read only when leaf 0
        // says it exists.
        #[allow(unused_unsafe)]
        let (l7_0, l7_1) = unsafe {
            if std::arch::x86_64::__cpuid(0).eax < 7 { return false; }
            (std::arch::x86_64::__cpuid_count(7, 0), std::arch::x86_64::__cpuid_count(7, 1))
        };
        let avx512_bf16 = l7_1.eax & (1 << 5) != 0;
        let amx_bf16 = l7_0.edx & (1 << 22) != 0;
        avx512_bf16 || amx_bf16
    }
    #[cfg(not(target_arch = "x86_64"))]
    { false }
}

/// Runs `f` with CPU bfloat16 autocast on (PyTorch `torch.autocast("cpu")`).
pub fn with_cpu_autocast<T>(f: impl FnOnce() -> T) -> T {
    cpu_autocast::run(f)
}

#[cfg(not(windows))]
mod cpu_autocast {
    //! libtorch's C++ `at::autocast` entry points for the CPU device type, which the tch
    //! C API does not wrap (it only toggles CUDA autocast). `c10::DeviceType` is an
    //! `int8_t` enum, CPU = 0; the default CPU autocast dtype is bfloat16.
    pub const AVAILABLE: bool = true;
    const CPU: i8 = 0;
    unsafe extern "C" {
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        fn set_autocast_enabled(dev: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        fn is_autocast_enabled(dev: i8) -> bool;
    }
    pub fn run<T>(f: impl FnOnce() -> T) -> T {
        // SAFETY: plain functions of libtorch_cpu (linked through torch-sys) taking an
        // int8 enum and a bool; they only flip thread-local flags.
        let prev = unsafe { is_autocast_enabled(CPU) };
        unsafe { set_autocast_enabled(CPU, true) };
        unsafe { torch_sys::at_autocast_increment_nesting() };
        let out = f();
        if unsafe { torch_sys::at_autocast_decrement_nesting() } == 0 {
            unsafe { torch_sys::at_autocast_clear_cache() };
        }
        unsafe { set_autocast_enabled(CPU, prev) };
        out
    }
}

#[cfg(windows)]
mod cpu_autocast {
    pub const AVAILABLE: bool = false;
    pub fn run<T>(f: impl FnOnce() -> T) -> T { f() }
}
