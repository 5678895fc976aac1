// C ABI of kestrel's c10d shim (see c10d_shim.cpp); mirrored in src/distributed/ffi.rs.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { KD_OP_SUM = 0, KD_OP_MAX = 1, KD_OP_MIN = 2 };

typedef struct kd_store kd_store;
typedef struct kd_pg kd_pg;
typedef struct kd_work kd_work;
typedef struct kd_reducer kd_reducer;

void kd_free_error(char* e);
char* kd_store_new(const char* host, uint16_t port, int is_server, int world, int64_t timeout_ms, kd_store** out);
void kd_store_free(kd_store* s);
char* kd_store_set(kd_store* s, const char* key, const uint8_t* val, size_t len);
char* kd_store_get(kd_store* s, const char* key, uint8_t** val, size_t* len);
void kd_free_bytes(uint8_t* b);
char* kd_pg_gloo_new(kd_store* s, const char* prefix, int rank, int world, const char* bind_addr, int threads,
                     int64_t timeout_ms, kd_pg** out);
char* kd_pg_nccl_new(kd_store* s, const char* prefix, int rank, int world, int64_t timeout_ms, kd_pg** out);
void kd_pg_free(kd_pg* p);
char* kd_allreduce_start(kd_pg* p, void* const* ts, size_t n, int op, int coalesced, int64_t timeout_ms, kd_work** out);
char* kd_work_wait(kd_work* w, int64_t timeout_ms);
void kd_work_free(kd_work* w);
char* kd_broadcast(kd_pg* p, void* const* ts, size_t n, int root, int64_t timeout_ms);
char* kd_barrier(kd_pg* p, int64_t timeout_ms);
int kd_has_nccl(void);
char* kd_reducer_new(kd_pg* p, void* const* params, size_t n, int64_t bucket_bytes, int64_t first_bucket_bytes,
                     kd_reducer** out);
char* kd_reducer_prepare(kd_reducer* r);
char* kd_reducer_stats(kd_reducer* r, int64_t* comm_ns, int64_t* overlap_ns);
void kd_reducer_free(kd_reducer* r);

#ifdef __cplusplus
}
#endif
