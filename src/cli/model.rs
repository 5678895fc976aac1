//! The model options shared by every subcommand that trains (`fine-tune`, `lr-find`):
//! architecture, pretrained weights, numeric precision and memory layout, and the
//! `vision_learner` they describe.

use crate::data::DataLoaders;
use crate::learner::{Learner, Precision, vision_learner};
use crate::models::Arch;
use crate::models::zoo::weights_file;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// `--precision`: the numeric precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// bf16 autocast on a CPU with native bfloat16 (AVX512-BF16 or AMX, detected at run
    /// time), fp16 on CUDA, else fp32 ([`Precision::auto`]).
    Auto,
    /// float32 throughout.
    Fp32,
    /// bfloat16 autocast of the forward pass, float32 weights and optimizer (PyTorch
    /// `torch.autocast("cpu", torch.bfloat16)`); on CUDA this is fp16.
    Bf16,
    /// float16 autocast with dynamic loss scaling (fastai `to_fp16`); needs a CUDA GPU.
    Fp16,
}

impl PrecisionArg {
    /// The precision this choice means on `device`.
    pub fn resolve(self, device: tch::Device) -> Precision {
        match self {
            PrecisionArg::Auto => Precision::auto(device),
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Bf16 if matches!(device, tch::Device::Cuda(_)) => Precision::Fp16,
            PrecisionArg::Bf16 => Precision::Bf16Cpu,
            PrecisionArg::Fp16 => Precision::Fp16,
        }
    }
}

/// The network and how it computes (fastai `vision_learner(dls, arch, pretrained=...)`
/// plus `to_fp16`/`to_bf16` and the channels-last layout).
#[derive(Args, Debug, Clone)]
pub struct ModelOpts {
    /// Architecture: resnet18, resnet34, resnet50, resnet101, resnet152,
    /// efficientnet_lite0 … efficientnet_lite4 (fastai `vision_learner(dls, arch)`). The
    /// default, efficientnet_lite2, is kestrel's measured recipe (README "Training
    /// recipe"); the book's chapter 5 uses resnet34, adapted offline as efficientnet_lite0.
    #[arg(long, default_value = "efficientnet_lite2")]
    pub arch: String,
    /// Start from random weights instead of ImageNet-pretrained ones (fastai
    /// `pretrained=False`).
    #[arg(long)]
    pub no_pretrained: bool,
    /// Pretrained weight file to use instead of the downloaded/installed one.
    #[arg(long, value_name = "FILE", conflicts_with = "no_pretrained")]
    pub weights: Option<PathBuf>,
    /// Numeric precision: auto (bf16 autocast where the CPU has native bfloat16 —
    /// AVX512-BF16 or AMX —, fp16 with loss scaling on CUDA, else fp32), fp32, bf16, fp16.
    /// The precision used is recorded in the model file and report.html.
    #[arg(long, value_enum, default_value = "auto", value_name = "P")]
    pub precision: PrecisionArg,
    /// Channels-last memory layout of weights and batches (PyTorch
    /// `memory_format=torch.channels_last`): the fastest layout for these convolutions on
    /// the CPU (default true; `--channels-last false` for NCHW).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub channels_last: bool,
}

impl ModelOpts {
    /// The architecture. Errors: an unknown name (the known ones are listed).
    pub fn arch(&self) -> crate::Result<Arch> { self.arch.parse() }

    /// fastai `vision_learner` on `dls` with these options: pretrained body (unless
    /// `--no-pretrained`), a new head initialised after `tch::manual_seed(seed)` (fastai
    /// `set_seed`), per-batch seeding, channels-last and the precision. `init` runs on the
    /// learner before the layout and precision are applied (e.g. to load trained weights).
    ///
    /// Errors: an unknown arch, missing weights (the path or URL is named), fp16 off CUDA.
    pub fn learner(&self, dls: DataLoaders, seed: u64, init: impl FnOnce(&mut Learner) -> crate::Result<()>) -> crate::Result<Learner> {
        let arch = self.arch()?;
        let device = dls.train.device();
        let weights = if self.no_pretrained { None } else { Some(weights_file(arch.name(), self.weights.as_deref(), true)?) };
        tch::manual_seed(seed as i64);
        let mut learn = vision_learner(dls, arch, weights.as_deref())?.with_seed(seed);
        init(&mut learn)?;
        if self.channels_last { learn.to_channels_last(); }
        learn.set_precision(self.precision.resolve(device))?;
        Ok(learn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_choices() {
        let cpu = tch::Device::Cpu;
        assert_eq!(PrecisionArg::Fp32.resolve(cpu), Precision::Fp32);
        assert_eq!(PrecisionArg::Bf16.resolve(cpu), Precision::Bf16Cpu);
        assert_eq!(PrecisionArg::Bf16.resolve(tch::Device::Cuda(0)), Precision::Fp16);
        assert_eq!(PrecisionArg::Auto.resolve(tch::Device::Cuda(0)), Precision::Fp16);
        let native = crate::learner::fp16::cpu_has_native_bf16();
        assert_eq!(PrecisionArg::Auto.resolve(cpu), if native { Precision::Bf16Cpu } else { Precision::Fp32 });
        assert_eq!(["fp32", "fp16", "bf16"], [Precision::Fp32.name(), Precision::Fp16.name(), Precision::Bf16Cpu.name()]);
    }
}
