// Memory-lean training ops (kestrel::models::lean): two autograd functions that compute
// exactly what the standard libtorch ops compute, forward and backward, but keep fewer
// activations alive for the backward pass. Training EfficientNet-Lite0 keeps ~82 MB of
// activations per image with the standard ops; these are most of the run's memory and
// each page of it is faulted in once.
//
// - kt_bn_relu6: BatchNorm (training mode) then ReLU6. libtorch's BatchNorm keeps its input,
//   hardtanh keeps its own input (BatchNorm's output), and the next convolution keeps the
//   ReLU6 output: three full tensors. This keeps BatchNorm's input and the ReLU6 output
//   (the same storage the convolution keeps): two.
// - kt_conv_frozen: a convolution whose weight is frozen (fastai's freeze) but whose input
//   needs a gradient. libtorch's convolution keeps its input even when the weight needs no
//   gradient; the input gradient only needs the input's shape and the weight.
//
// The entry points return the result in *out, or leave *out NULL when the op does not
// apply (autograd not recording, autocast on, not float32 on the CPU, nothing needing a
// gradient); the caller then runs the standard ops. Errors follow shim_util.hpp.
#include <ATen/autocast_mode.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/hardtanh_backward.h>
#include <ATen/ops/native_batch_norm.h>
#include <ATen/ops/native_batch_norm_backward.h>
#include <torch/csrc/autograd/custom_function.h>

#include "shim_util.hpp"
#include "train_ops.h"

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// BatchNorm in training mode (batch statistics, running statistics updated with
// `momentum`) followed by ReLU6 = hardtanh(0, 6), in place on BatchNorm's output (autograd
// does not see it, so nothing copies it). Keeps BatchNorm's input and the ReLU6 output.
// The gradient of ReLU6 is hardtanh_backward itself, reading the ReLU6 output instead of
// BatchNorm's: it is zero where its argument is <= 0 or >= 6, which clamping preserves.
// Calling the same op also gives the gradient the standard path's memory layout, which
// picks BatchNorm's backward kernel (channels-last or not), so results match bit for bit.
struct BnRelu6 : public torch::autograd::Function<BnRelu6> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                            at::Tensor rm, at::Tensor rv, double momentum, double eps) {
    auto [y, mean, invstd] = at::native_batch_norm(x, w, b, rm, rv, /*training=*/true, momentum, eps);
    y.clamp_(0, 6);
    ctx->save_for_backward({x, w, mean, invstd, y});
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &w = s[1], &mean = s[2], &invstd = s[3], &y = s[4];
    at::Tensor g = at::hardtanh_backward(grads[0], y, 0, 6);
    auto [gx, gw, gb] = at::native_batch_norm_backward(
        g, x, w, {}, {}, mean, invstd, /*train=*/true, ctx->saved_data["eps"].toDouble(),
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)});
    return {gx, gw, gb, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// conv2d without bias, dilation 1, whose weight needs no gradient. Backward computes only
// the input gradient (convolution_backward with output mask {input}), which reads the
// input's shape and strides but not its values: an uninitialised tensor stands in.
struct FrozenConv : public torch::autograd::Function<FrozenConv> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, std::vector<int64_t> stride,
                            std::vector<int64_t> padding, int64_t groups) {
    ctx->save_for_backward({w});
    ctx->saved_data["sizes"] = x.sizes().vec();
    ctx->saved_data["strides"] = x.strides().vec();
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["groups"] = groups;
    return at::conv2d(x, w, {}, stride, padding, {1, 1}, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& w = ctx->get_saved_variables()[0];
    const at::Tensor& g = grads[0];
    auto sizes = ctx->saved_data["sizes"].toIntVector();
    auto strides = ctx->saved_data["strides"].toIntVector();
    at::Tensor shape_only = at::empty_strided(sizes, strides, g.options());
    auto stride = ctx->saved_data["stride"].toIntVector();
    auto padding = ctx->saved_data["padding"].toIntVector();
    std::vector<int64_t> dilation{1, 1}, output_padding{0, 0};
    auto [gx, gw, gb] = at::convolution_backward(g, shape_only, w, std::nullopt, stride, padding, dilation,
                                                 /*transposed=*/false, output_padding,
                                                 ctx->saved_data["groups"].toInt(), {true, false, false});
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Autograd records, no autocast, float32 on the CPU: where the ops were checked against
// the standard ones.
bool recording_f32_cpu(const at::Tensor& x) {
  return at::GradMode::is_enabled() && x.is_cpu() && x.scalar_type() == at::kFloat &&
         !at::autocast::is_autocast_enabled(at::kCPU);
}

at::Tensor& handle(void* t) { return *static_cast<at::Tensor*>(t); }
}  // namespace

extern "C" {

char* kt_bn_relu6(void* x, void* w, void* b, void* rm, void* rv, double momentum, double eps, void** out) {
  *out = nullptr;
  return kd::guarded("BatchNorm + ReLU6", [&] {
    const at::Tensor &tx = handle(x), &tw = handle(w), &tb = handle(b);
    if (!recording_f32_cpu(tx) || !(tx.requires_grad() || tw.requires_grad() || tb.requires_grad())) return;
    at::Tensor y = BnRelu6::apply(tx, tw, tb, handle(rm), handle(rv), momentum, eps);
    *out = new at::Tensor(std::move(y));
  });
}

char* kt_conv_frozen(void* x, void* w, int64_t stride, int64_t pad_h, int64_t pad_w, int64_t groups, void** out) {
  *out = nullptr;
  return kd::guarded("convolution", [&] {
    const at::Tensor &tx = handle(x), &tw = handle(w);
    if (!recording_f32_cpu(tx) || !tx.requires_grad() || tw.requires_grad()) return;
    at::Tensor y = FrozenConv::apply(tx, tw, std::vector<int64_t>{stride, stride}, std::vector<int64_t>{pad_h, pad_w},
                                     groups);
    *out = new at::Tensor(std::move(y));
  });
}

}  // extern "C"
