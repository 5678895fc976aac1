// What every C++ file of kestrel's shims shares (csrc/: the c10d shim and the training
// ops): the error convention — every entry point catches C++ exceptions and returns them
// as a malloc'd message (NULL on success) that Rust frees with kd_free_error — and the
// tensor handles tch passes.
#pragma once
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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
