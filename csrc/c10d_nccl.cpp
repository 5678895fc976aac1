// The NCCL process group of kestrel's c10d shim: compiled by build.rs only when libtorch
// has CUDA (libtorch_cuda.so, which exports ProcessGroupNCCL) and the CUDA runtime and NCCL
// headers are found (the PyPI wheel's nvidia-* packages ship them). Same error convention
// as c10d_shim.cpp (c10d_internal.hpp).
#include <string>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "c10d_internal.hpp"
#include "c10d_shim.h"

extern "C" {
int kd_has_nccl(void) { return 1; }

char* kd_pg_nccl_new(kd_store* s, const char* prefix, int rank, int world, int64_t timeout_ms, kd_pg** out) {
  return kd::guarded("ProcessGroupNCCL", [&] {
    auto o = c10d::ProcessGroupNCCL::Options::create();
    o->timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), s->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, o);
    *out = new kd_pg{pg};
  });
}
}
