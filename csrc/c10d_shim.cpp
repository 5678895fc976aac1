// kestrel's C ABI over libtorch's c10d (the collectives PyTorch DDP uses): a TCPStore
// rendezvous, a Gloo process group (NCCL in c10d_nccl.cpp), allreduce (one tensor list,
// or coalesced), broadcast and barrier with timeouts (DDP's gradient reducer is in
// c10d_reducer.cpp). Every entry point catches C++ exceptions and returns them as a
// malloc'd message (NULL on success) that Rust frees with kd_free_error, so a failed
// collective is a Rust error, never an abort (c10d_internal.hpp).
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include "c10d_internal.hpp"
#include "c10d_shim.h"

namespace {
using kd::guarded;
using kd::tensors;

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case KD_OP_SUM: return c10d::ReduceOp::SUM;
    case KD_OP_MAX: return c10d::ReduceOp::MAX;
    case KD_OP_MIN: return c10d::ReduceOp::MIN;
    default: throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

void wait(const c10::intrusive_ptr<c10d::Work>& w, int64_t timeout_ms) {
  // Work::wait throws the collective's exception (a lost peer, a timeout).
  w->wait(std::chrono::milliseconds(timeout_ms));
}
}  // namespace

extern "C" {

void kd_free_error(char* e) { std::free(e); }

char* kd_store_new(const char* host, uint16_t port, int is_server, int world, int64_t timeout_ms, kd_store** out) {
  return guarded("TCPStore", [&] {
    c10d::TCPStoreOptions o;
    o.port = port;
    o.isServer = is_server != 0;
    o.numWorkers = world;
    o.waitWorkers = true;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    auto s = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    *out = new kd_store{s};
  });
}

void kd_store_free(kd_store* s) { delete s; }

char* kd_store_set(kd_store* s, const char* key, const uint8_t* val, size_t len) {
  return guarded("TCPStore set", [&] { s->store->set(std::string(key), std::vector<uint8_t>(val, val + len)); });
}

char* kd_store_get(kd_store* s, const char* key, uint8_t** val, size_t* len) {
  return guarded("TCPStore get", [&] {
    auto v = s->store->get(std::string(key));
    *val = static_cast<uint8_t*>(std::malloc(v.size() ? v.size() : 1));
    if (!*val) throw std::bad_alloc();
    std::memcpy(*val, v.data(), v.size());
    *len = v.size();
  });
}

void kd_free_bytes(uint8_t* b) { std::free(b); }

char* kd_pg_gloo_new(kd_store* s, const char* prefix, int rank, int world, const char* bind_addr, int threads,
                     int64_t timeout_ms, kd_pg** out) {
  return guarded("ProcessGroupGloo", [&] {
    auto o = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(std::string(bind_addr)));
    o->threads = threads;
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), s->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, o);
    *out = new kd_pg{pg};
  });
}

void kd_pg_free(kd_pg* p) { delete p; }

char* kd_allreduce_start(kd_pg* p, void* const* ts, size_t n, int op, int coalesced, int64_t timeout_ms, kd_work** out) {
  return guarded("allreduce", [&] {
    auto v = tensors(ts, n);
    c10::intrusive_ptr<c10d::Work> w;
    if (coalesced) {
      c10d::AllreduceCoalescedOptions o;
      o.reduceOp = reduce_op(op);
      o.timeout = std::chrono::milliseconds(timeout_ms);
      w = p->pg->allreduce_coalesced(v, o);
    } else {
      c10d::AllreduceOptions o;
      o.reduceOp = reduce_op(op);
      o.timeout = std::chrono::milliseconds(timeout_ms);
      w = p->pg->allreduce(v, o);
    }
    *out = new kd_work{w};
  });
}

char* kd_work_wait(kd_work* w, int64_t timeout_ms) {
  return guarded("collective", [&] { wait(w->work, timeout_ms); });
}

void kd_work_free(kd_work* w) { delete w; }

char* kd_broadcast(kd_pg* p, void* const* ts, size_t n, int root, int64_t timeout_ms) {
  return guarded("broadcast", [&] {
    auto v = tensors(ts, n);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    // Gloo broadcasts one tensor per call (several are for several devices).
    for (auto& t : v) {
      std::vector<at::Tensor> one{t};
      wait(p->pg->broadcast(one, o), timeout_ms);
    }
  });
}

char* kd_barrier(kd_pg* p, int64_t timeout_ms) {
  return guarded("barrier", [&] {
    c10d::BarrierOptions o;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    wait(p->pg->barrier(o), timeout_ms);
  });
}

}  // extern "C"

#ifndef KD_WITH_NCCL
extern "C" {
int kd_has_nccl(void) { return 0; }
char* kd_pg_nccl_new(kd_store*, const char*, int, int, int64_t, kd_pg**) {
  return kd::dup_error("ProcessGroupNCCL",
                   "this kestrel was built without NCCL (build.rs found no libtorch_cuda.so with CUDA and NCCL headers)");
}
}
#endif
