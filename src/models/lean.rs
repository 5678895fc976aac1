//! Memory-lean training ops (csrc/train_ops.cpp): BatchNorm + ReLU6 and a convolution with
//! a frozen weight, computing what libtorch's standard ops compute, forward and backward,
//! while autograd keeps fewer activations for the backward pass.
//!
//! Why: training EfficientNet-Lite0 at 224² keeps ~82 MB of activations per image with the
//! standard ops (2.6 GB at `--bs 32`), and every page of it is faulted in once, which costs
//! seconds of kernel time in the first epoch on a VM. With these ops the pets recipe's peak
//! RSS at `--bs 32` is 2.92 GB instead of 3.44 GB (README, "Memory and the allocator").
//! - [`bn_relu6`]: libtorch's BatchNorm keeps its input, `hardtanh` (ReLU6) keeps its own
//!   input (BatchNorm's output) and the next convolution keeps the ReLU6 output: three full
//!   tensors. This keeps BatchNorm's input and the ReLU6 output (the storage the
//!   convolution keeps): two.
//! - [`conv2d`]: libtorch's convolution keeps its input even when the weight is frozen
//!   (fastai `freeze()`), although the input gradient needs only the input's shape and the
//!   weight.
//!
//! Both apply only where they were checked against the standard ops: autograd recording,
//! float32 on the CPU, no autocast. Elsewhere (inference, `no_grad`, bf16/fp16, CUDA) they
//! run the standard ops.

use std::ffi::{c_char, c_void};

use tch::{Tensor, nn};

use crate::distributed::ffi::take_error;

unsafe extern "C" {
    fn kt_bn_relu6(x: *mut c_void, w: *mut c_void, b: *mut c_void, rm: *mut c_void, rv: *mut c_void, momentum: f64,
                   eps: f64, out: *mut *mut c_void) -> *mut c_char;
    fn kt_conv_frozen(x: *mut c_void, w: *mut c_void, stride: i64, pad_h: i64, pad_w: i64, groups: i64,
                      out: *mut *mut c_void) -> *mut c_char;
}

/// A tch handle as the shim takes it (`at::Tensor*`); the shim copies the handle, never
/// frees it.
fn handle(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// The shim's result: `Some` tensor, `None` when the op did not apply.
///
/// Panics with libtorch's message on an error, as tch's own ops do (the error would be a
/// shape or type mismatch that the standard op also panics on).
fn take(what: &str, err: *mut c_char, out: *mut c_void) -> Option<Tensor> {
    if let Err(e) = take_error(err) {
        panic!("{what}: {e}");
    }
    // SAFETY: a non-NULL `out` is a new `at::Tensor*` that the shim hands over.
    (!out.is_null()).then(|| unsafe { Tensor::from_ptr(out.cast()) })
}

/// ReLU6 of BatchNorm `bn` applied to `x` (N, C, H, W): `min(max(bn(x), 0), 6)`, PyTorch's
/// `nn.ReLU6()(nn.BatchNorm2d(...)(x))`, with `bn`'s `momentum` and `eps` (tch keeps them
/// private). In training mode (`train`), the running statistics are updated with
/// `momentum`, as `nn.BatchNorm2d` does. The result must not be modified in place while
/// autograd needs it (libtorch then refuses the backward pass).
pub(crate) fn bn_relu6(bn: &nn::BatchNorm, x: &Tensor, train: bool, momentum: f64, eps: f64) -> Tensor {
    if let (true, Some(w), Some(b)) = (train, &bn.ws, &bn.bs) {
        let mut out = std::ptr::null_mut();
        // SAFETY: every handle is a live tensor for the duration of the call.
        let err = unsafe {
            kt_bn_relu6(handle(x), handle(w), handle(b), handle(&bn.running_mean), handle(&bn.running_var), momentum,
                        eps, &mut out)
        };
        if let Some(y) = take("BatchNorm + ReLU6", err, out) {
            return y;
        }
    }
    let mut y = nn::ModuleT::forward_t(bn, x, train);
    if y.requires_grad() { y.relu6() } else { y.relu6_() }
}

/// 2-D convolution of `x` (N, C_in, H, W) with `w` (C_out, C_in/groups, kH, kW), no bias,
/// the same `stride` on both axes, `padding` (H, W) and dilation 1: PyTorch's
/// `F.conv2d(x, w, None, stride, padding, 1, groups)`. When `w` is frozen (no gradient)
/// and `x` needs one, autograd keeps only `w` and `x`'s shape.
pub(crate) fn conv2d(x: &Tensor, w: &Tensor, stride: i64, padding: [i64; 2], groups: i64) -> Tensor {
    let mut out = std::ptr::null_mut();
    // SAFETY: both handles are live tensors for the duration of the call.
    let err = unsafe { kt_conv_frozen(handle(x), handle(w), stride, padding[0], padding[1], groups, &mut out) };
    take("convolution", err, out)
        .unwrap_or_else(|| x.conv2d(w, None::<&Tensor>, [stride, stride], padding, [1, 1], groups))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;

    fn grads(vs: &[&Tensor]) -> Vec<Tensor> {
        vs.iter().map(|t| t.grad().copy()).collect()
    }

    fn zero(vs: &[&Tensor]) {
        for t in vs {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Forward values, running statistics and gradients (input, weight, bias) equal the
    /// standard BatchNorm → ReLU6 bit for bit; values exactly 0 and 6 and beyond them are hit
    /// (PyTorch's hardtanh_backward passes the gradient only strictly inside (0, 6)).
    #[test]
    fn bn_relu6_matches_the_standard_ops_bit_for_bit() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = nn::BatchNormConfig { eps: 1e-3, momentum: 0.01, ..Default::default() };
        let bn = nn::batch_norm2d(vs.root() / "bn", 6, cfg);
        tch::no_grad(|| {
            bn.ws.as_ref().unwrap().shallow_clone().copy_(&Tensor::from_slice(&[1.0f32, 2.0, 4.0, 0.5, 3.0, 1.5]));
            bn.bs.as_ref().unwrap().shallow_clone().copy_(&Tensor::from_slice(&[0.0f32, 1.0, 3.0, 6.0, 2.0, -1.0]));
        });
        let (w, b) = (bn.ws.as_ref().unwrap(), bn.bs.as_ref().unwrap());
        // Contiguous and channels-last (what kestrel trains in on the CPU), with a gradient
        // arriving in the other layout.
        for channels_last in [false, true] {
            let mut x0 = Tensor::randn([4, 6, 5, 7], (Kind::Float, Device::Cpu)) * 2.0;
            let mut gy = Tensor::randn([4, 6, 5, 7], (Kind::Float, Device::Cpu));
            if channels_last {
                x0 = crate::learner::fp16::channels_last(&x0);
            } else {
                gy = crate::learner::fp16::channels_last(&gy);
            }
            let (rm0, rv0) = (bn.running_mean.copy(), bn.running_var.copy());
            let x = x0.copy().set_requires_grad(true);
            assert_eq!(x.stride()[1] == 1, channels_last);
            zero(&[&x, w, b]);
            let want = nn::ModuleT::forward_t(&bn, &x, true).relu6();
            (&want * &gy).sum(Kind::Float).backward();
            let want_g = grads(&[&x, w, b]);
            let (rm1, rv1) = (bn.running_mean.copy(), bn.running_var.copy());
            tch::no_grad(|| {
                bn.running_mean.shallow_clone().copy_(&rm0);
                bn.running_var.shallow_clone().copy_(&rv0);
            });
            zero(&[&x, w, b]);
            let got = bn_relu6(&bn, &x, true, 0.01, 1e-3);
            (&got * &gy).sum(Kind::Float).backward();
            assert!(got.equal(&want), "channels-last {channels_last}: forward");
            assert!(bn.running_mean.equal(&rm1) && bn.running_var.equal(&rv1), "channels-last {channels_last}: running stats");
            for (g, w) in grads(&[&x, w, b]).iter().zip(&want_g) {
                assert!(g.equal(w), "channels-last {channels_last}: gradient differs by {}", (g - w).abs().max().double_value(&[]));
            }
            let clipped = want.eq(0.0).logical_or(&want.eq(6.0)).sum(Kind::Int64).int64_value(&[]);
            assert!(clipped > 100, "the test reaches both clamps ({clipped} clipped values)");
        }
    }

    /// Without autograd recording the standard ops run (in-place ReLU6), same values.
    #[test]
    fn bn_relu6_without_grad_is_the_standard_op() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = nn::batch_norm2d(vs.root(), 3, Default::default());
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu)) * 5.0;
        let (rm, rv) = (bn.running_mean.copy(), bn.running_var.copy());
        let got = tch::no_grad(|| bn_relu6(&bn, &x, true, 0.1, 1e-5));
        assert!(!got.requires_grad());
        bn.running_mean.shallow_clone().copy_(&rm);
        bn.running_var.shallow_clone().copy_(&rv);
        let want = tch::no_grad(|| nn::ModuleT::forward_t(&bn, &x, true).clamp(0.0, 6.0));
        assert!(got.equal(&want));
        assert_eq!(got.min().double_value(&[]), 0.0);
    }

    /// The input gradient through a frozen convolution equals the standard conv2d's bit for
    /// bit, for the convolutions EfficientNet-Lite has (1×1, depthwise 3×3 and 5×5 with
    /// stride 1 and 2, the 3×3 stride-2 stem); the weight gets no gradient.
    #[test]
    fn frozen_conv_matches_the_standard_op_bit_for_bit() {
        tch::manual_seed(0);
        for (c_in, c_out, hw, k, stride, pad, groups) in
            [(8, 24, 14, 1, 1, [0, 0], 1), (24, 24, 15, 3, 2, [0, 0], 24), (24, 24, 14, 5, 1, [2, 2], 24), (3, 16, 17, 3, 2, [1, 1], 1)]
        {
            let x = Tensor::randn([3, c_in, hw, hw], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let w = Tensor::randn([c_out, c_in / groups, k, k], (Kind::Float, Device::Cpu));
            let want = x.conv2d(&w, None::<&Tensor>, [stride, stride], pad, [1, 1], groups);
            let gy = want.randn_like();
            (&want * &gy).sum(Kind::Float).backward();
            let want_g = x.grad().copy();
            zero(&[&x]);
            let got = conv2d(&x, &w, stride, pad, groups);
            (&got * &gy).sum(Kind::Float).backward();
            assert!(got.equal(&want), "k{k} s{stride} g{groups}: forward");
            assert!(x.grad().equal(&want_g), "k{k} s{stride} g{groups}: input gradient");
            assert!(!w.grad().defined());
        }
    }

    /// A trainable weight takes the standard op (which keeps the input for its gradient).
    #[test]
    fn conv_with_a_trainable_weight_gets_its_gradient() {
        let x = Tensor::randn([1, 2, 5, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let w = Tensor::ones([1, 2, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        conv2d(&x, &w, 1, [1, 1], 1).sum(Kind::Float).backward();
        assert_eq!(w.grad().size(), [1, 2, 3, 3]);
        // The centre tap sees every pixel: its gradient is the sum of the input.
        let centre = w.grad().get(0).get(0).get(1).get(1).double_value(&[]);
        assert!((centre - x.get(0).get(0).sum(Kind::Float).double_value(&[])).abs() < 1e-4);
    }
}
