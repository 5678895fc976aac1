// PyTorch DDP's gradient reducer for kestrel: libtorch's own c10d::Reducer over a
// process group of the shim, set up as torch.nn.parallel.DistributedDataParallel sets it
// up with its defaults (find_unused_parameters=False, gradient_as_bucket_view=False,
// bucket_cap_mb=25 with a 1 MiB first bucket), with DDP's c10d::Logger for the
// communication times. The Reducer registers a hook on every parameter's gradient
// accumulator: as backward produces the gradients, each full bucket is divided by the
// world size and all-reduced while backward goes on; at the end of backward the averaged
// gradients are in the parameters' .grad. Same error convention as c10d_shim.cpp.
#include <algorithm>
#include <limits>
#include <memory>
#include <sstream>
#include <unordered_map>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/logger.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include "c10d_internal.hpp"
#include "c10d_shim.h"

namespace {
// The bracketed integer lists of `s`, in order ("[1280, 320, 1, 1]" -> {1280, 320, 1, 1}).
std::vector<std::vector<int64_t>> int_lists(const std::string& s) {
  std::vector<std::vector<int64_t>> out;
  for (size_t i = s.find('['); i != std::string::npos; i = s.find('[', i + 1)) {
    size_t j = s.find(']', i);
    if (j == std::string::npos) break;
    std::string body = s.substr(i + 1, j - i - 1);
    std::replace(body.begin(), body.end(), ',', ' ');
    std::istringstream in(body);
    std::vector<int64_t> v;
    for (int64_t x; in >> x;) v.push_back(x);
    out.push_back(v);
  }
  return out;
}

// c10d::Reducer warns (once per process) when a gradient's strides differ from its bucket
// view's, and compares the strides of size-1 dimensions too: a 1x1 convolution's weight
// gradient in channels-last layout ([C, 1, C, C]) against a bucket view of the same memory
// order ([C, 1, 1, 1]) makes it warn about nothing (pytorch/pytorch#47163). This handler
// drops that warning when the strides differ only at size-1 dimensions and passes every
// other warning, the real stride mismatches included, to the handler that was in place.
class SpuriousStrideWarningFilter : public c10::WarningHandler {
 public:
  explicit SpuriousStrideWarningFilter(c10::WarningHandler* next) : next_(next) {}
  void process(const c10::Warning& w) override {
    if (!spurious(w.msg())) next_->process(w);
  }

 private:
  static bool spurious(const std::string& msg) {
    if (msg.rfind("Grad strides do not match bucket view strides", 0) != 0) return false;
    auto l = int_lists(msg);  // grad sizes, grad strides, bucket sizes, bucket strides
    if (l.size() < 4 || l[0] != l[2] || l[1].size() != l[0].size() || l[3].size() != l[0].size()) return false;
    for (size_t d = 0; d < l[0].size(); ++d) {
      if (l[0][d] != 1 && l[1][d] != l[3][d]) return false;
    }
    return true;
  }
  c10::WarningHandler* next_;
};

void filter_spurious_stride_warnings() {
  static auto* filter = [] {
    auto* f = new SpuriousStrideWarningFilter(c10::WarningUtils::get_warning_handler());
    c10::WarningUtils::set_warning_handler(f);
    return f;
  }();
  (void)filter;
}
}  // namespace

struct kd_reducer {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  std::shared_ptr<c10d::Reducer> reducer;
  std::shared_ptr<c10d::Logger> logger;
};

extern "C" {

char* kd_reducer_new(kd_pg* p, void* const* params, size_t n, int64_t bucket_bytes, int64_t first_bucket_bytes,
                     kd_reducer** out) {
  return kd::guarded("Reducer", [&] {
    auto v = kd::tensors(params, n);
    if (v.empty()) throw std::invalid_argument("no parameter requires a gradient");
    filter_spurious_stride_warnings();
    // The Reducer calls collectives through a ProcessGroup, which dispatches them by
    // device type to its backend: wrap the shim's Gloo (CPU) or NCCL (CUDA) backend.
    auto device = v[0].device().type();
    auto type = device == c10::DeviceType::CUDA ? c10d::ProcessGroup::BackendType::NCCL
                                                : c10d::ProcessGroup::BackendType::GLOO;
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(p->pg->getRank(), p->pg->getSize());
    pg->setBackend(device, type, p->pg);
    pg->setDefaultBackend(type);
    std::vector<bool> sparse(n, false);
    // As DDP with find_unused_parameters=False: the order in which gradients become ready
    // is not known before the first backward, so it runs with a single bucket; the Reducer
    // then rebuilds the buckets (first_bucket_bytes, then bucket_bytes each) in the order
    // observed, identically on every rank (rank 0's order is broadcast).
    auto assignment = c10d::compute_bucket_assignment_by_size(v, {std::numeric_limits<size_t>::max()}, sparse);
    auto indices = std::get<0>(assignment);
    std::reverse(indices.begin(), indices.end());
    auto reducer = std::make_shared<c10d::Reducer>(v, indices, pg, sparse, bucket_bytes,
                                                   /*find_unused_parameters=*/false, /*gradient_as_bucket_view=*/false,
                                                   std::unordered_map<size_t, std::string>{}, first_bucket_bytes,
                                                   /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
                                                   std::vector<int64_t>{});
    auto logger = std::make_shared<c10d::Logger>(reducer);
    reducer->set_logger(logger);
    *out = new kd_reducer{pg, reducer, logger};
  });
}

char* kd_reducer_prepare(kd_reducer* r) {
  return kd::guarded("Reducer", [&] {
    // DistributedDataParallel.forward's calls before and after the module's forward
    // (with find_unused_parameters=False the outputs are not needed).
    r->logger->set_runtime_stats_and_log();
    r->reducer->prepare_for_forward();
    r->reducer->rebuild_buckets();
    r->reducer->prepare_for_backward({});
  });
}

char* kd_reducer_stats(kd_reducer* r, int64_t* comm_ns, int64_t* overlap_ns) {
  return kd::guarded("Reducer", [&] {
    auto d = r->logger->get_ddp_logging_data();
    auto get = [&](const char* k) {
      auto it = d.ints_map.find(k);
      return it == d.ints_map.end() ? int64_t{0} : it->second;
    };
    *comm_ns = get("avg_backward_comm_time");
    *overlap_ns = get("avg_backward_compute_comm_overlap_time");
  });
}

void kd_reducer_free(kd_reducer* r) {
  // ~Reducer removes its hooks and may throw (noexcept(false)); never across the C ABI.
  try {
    delete r;
  } catch (...) {
  }
}

}  // extern "C"
