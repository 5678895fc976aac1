//! The C ABI of the c10d shim (csrc/c10d_shim.h), compiled by build.rs. Every function that
//! can fail returns a `malloc`'d message (NULL on success) that [`take_error`] frees.

use std::ffi::{CStr, c_char, c_int, c_void};

#[repr(C)]
pub(crate) struct KdStore { _p: [u8; 0] }
#[repr(C)]
pub(crate) struct KdPg { _p: [u8; 0] }
#[repr(C)]
pub(crate) struct KdWork { _p: [u8; 0] }
#[repr(C)]
pub(crate) struct KdReducer { _p: [u8; 0] }

pub(crate) const KD_OP_SUM: c_int = 0;
pub(crate) const KD_OP_MAX: c_int = 1;
pub(crate) const KD_OP_MIN: c_int = 2;

unsafe extern "C" {
    fn kd_free_error(e: *mut c_char);
    pub(crate) fn kd_store_new(host: *const c_char, port: u16, is_server: c_int, world: c_int, timeout_ms: i64, out: *mut *mut KdStore) -> *mut c_char;
    pub(crate) fn kd_store_free(s: *mut KdStore);
    pub(crate) fn kd_store_set(s: *mut KdStore, key: *const c_char, val: *const u8, len: usize) -> *mut c_char;
    pub(crate) fn kd_store_get(s: *mut KdStore, key: *const c_char, val: *mut *mut u8, len: *mut usize) -> *mut c_char;
    pub(crate) fn kd_free_bytes(b: *mut u8);
    pub(crate) fn kd_pg_gloo_new(s: *mut KdStore, prefix: *const c_char, rank: c_int, world: c_int, bind_addr: *const c_char,
                                 threads: c_int, timeout_ms: i64, out: *mut *mut KdPg) -> *mut c_char;
    pub(crate) fn kd_pg_nccl_new(s: *mut KdStore, prefix: *const c_char, rank: c_int, world: c_int, timeout_ms: i64,
                                 out: *mut *mut KdPg) -> *mut c_char;
    pub(crate) fn kd_pg_free(p: *mut KdPg);
    pub(crate) fn kd_allreduce_start(p: *mut KdPg, ts: *const *mut c_void, n: usize, op: c_int, coalesced: c_int,
                                     timeout_ms: i64, out: *mut *mut KdWork) -> *mut c_char;
    pub(crate) fn kd_work_wait(w: *mut KdWork, timeout_ms: i64) -> *mut c_char;
    pub(crate) fn kd_work_free(w: *mut KdWork);
    pub(crate) fn kd_broadcast(p: *mut KdPg, ts: *const *mut c_void, n: usize, root: c_int, timeout_ms: i64) -> *mut c_char;
    pub(crate) fn kd_barrier(p: *mut KdPg, timeout_ms: i64) -> *mut c_char;
    pub(crate) fn kd_has_nccl() -> c_int;
    pub(crate) fn kd_reducer_new(p: *mut KdPg, params: *const *mut c_void, n: usize, bucket_bytes: i64, first_bucket_bytes: i64,
                                 out: *mut *mut KdReducer) -> *mut c_char;
    pub(crate) fn kd_reducer_prepare(r: *mut KdReducer) -> *mut c_char;
    pub(crate) fn kd_reducer_stats(r: *mut KdReducer, comm_ns: *mut i64, overlap_ns: *mut i64) -> *mut c_char;
    pub(crate) fn kd_reducer_free(r: *mut KdReducer);
}

/// `Ok(())` for NULL, else the message (freed here). Shared with the training ops
/// (csrc/train_ops.cpp, `crate::models::lean`), which follow the same error convention.
pub(crate) fn take_error(e: *mut c_char) -> Result<(), String> {
    if e.is_null() {
        return Ok(());
    }
    // SAFETY: a non-NULL result is a NUL-terminated string malloc'd by the shim.
    let msg = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
    unsafe { kd_free_error(e) };
    Err(msg)
}
