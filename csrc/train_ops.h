// C ABI of kestrel's memory-lean training ops (train_ops.cpp); mirrored in
// src/models/lean.rs. Tensors are tch's handles (`at::Tensor*`); a result is a new handle
// that Rust owns, or NULL when the op does not apply. Errors: a malloc'd message, NULL on
// success, freed with kd_free_error (c10d_shim.h).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

char* kt_bn_relu6(void* x, void* w, void* b, void* rm, void* rv, double momentum, double eps, void** out);
char* kt_conv_frozen(void* x, void* w, int64_t stride, int64_t pad_h, int64_t pad_w, int64_t groups, void** out);

#ifdef __cplusplus
}
#endif
