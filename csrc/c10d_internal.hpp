// What the C++ files of kestrel's c10d shim share (not part of the C ABI): the handle
// types behind c10d_shim.h's opaque structs and the error convention — every entry point
// catches C++ exceptions and returns them as a malloc'd message (NULL on success).
#pragma once
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

struct kd_store { c10::intrusive_ptr<c10d::Store> store; };
struct kd_pg { c10::intrusive_ptr<c10d::Backend> pg; };
struct kd_work { c10::intrusive_ptr<c10d::Work> work; };

namespace kd {
inline char* dup_error(const char* where, const char* what) {
  std::string s = std::string(where) + ": " + what;
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

// Runs `f`, returning NULL, or the message of the exception it threw prefixed by `where`.
template <typename F>
char* guarded(const char* where, F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup_error(where, e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup_error(where, e.what());
  } catch (...) {
    return dup_error(where, "unknown C++ exception");
  }
}

// tch's C_tensor pointers are `at::Tensor*` (torch-sys torch_api.h): copies of the handles.
inline std::vector<at::Tensor> tensors(void* const* ts, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) v.push_back(*static_cast<at::Tensor*>(ts[i]));
  return v;
}
}  // namespace kd
