//! The C allocator of the whole process, and how to tell which one is in use.
//!
//! libtorch allocates CPU tensors through c10's `DefaultCPUAllocator` → `posix_memalign`
//! → the C library's allocator, so a Rust `#[global_allocator]` alone does not reach
//! them. glibc's malloc serves blocks above `M_MMAP_THRESHOLD` (at most 32 MiB) with
//! `mmap` and unmaps them on `free`: a training step's large activations are faulted in
//! again at every step (10.7 million minor page faults and a quarter of the CPU time in
//! the kernel in one epoch of the pets run).
//!
//! With the `jemalloc` cargo feature (on by default), kestrel links jemalloc with
//! unprefixed symbols (`tikv-jemalloc-sys`'s `unprefixed_malloc_on_supported_platforms`):
//! every binary linked with the library — the `kestrel` command, tests, examples and
//! benchmarks — defines `malloc`, `free`, `posix_memalign`… itself, and the dynamic
//! linker binds libtorch's calls to them before glibc's. The configuration is baked into
//! the binary through jemalloc's `malloc_conf` symbol ([`JEMALLOC_CONF`]): freed pages are
//! kept for reuse instead of being returned to the OS, so the process's memory stays at
//! its peak use and a training step faults no page in. `MALLOC_CONF` in the environment
//! still overrides it (jemalloc reads the variable last). The `kestrel` binary also installs
//! [`ZeroByMemset`] as Rust's global allocator, so zeroed Rust buffers are not purged and
//! faulted in again.

use std::alloc::{GlobalAlloc, Layout, System};

/// jemalloc's options as this build configures them (jemalloc `malloc_conf` syntax):
/// `dirty_decay_ms:-1,muzzy_decay_ms:-1` — never purge freed pages (measured on the pets
/// run: 1.1 M instead of 10.7 M minor faults per epoch; with jemalloc's default 10 s decay
/// the system time was higher than glibc's).
pub const JEMALLOC_CONF: &str = "dirty_decay_ms:-1,muzzy_decay_ms:-1";

#[cfg(feature = "jemalloc")]
mod imp {
    // No `#[global_allocator]`: Rust's `System` allocator calls `malloc`, which is
    // jemalloc's here, so there is one allocator in the process, and a binary (a test's
    // allocation counter) may still declare its own global allocator.

    /// [`super::JEMALLOC_CONF`] as the NUL-terminated C string jemalloc reads at its first
    /// allocation, before `main`.
    const CONF: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0";
    const _: () = assert!(CONF.len() == super::JEMALLOC_CONF.len() + 1);

    /// jemalloc's `malloc_conf` (a `const char *`, weak in jemalloc): this strong definition
    /// replaces it. The name is unprefixed where jemalloc replaces malloc (Linux and other
    /// ELF platforms), `_rjem_malloc_conf` elsewhere.
    #[cfg_attr(not(any(target_vendor = "apple", target_os = "windows", target_os = "android")), unsafe(export_name = "malloc_conf"))]
    #[cfg_attr(any(target_vendor = "apple", target_os = "windows", target_os = "android"), unsafe(export_name = "_rjem_malloc_conf"))]
    #[used]
    pub static MALLOC_CONF: Option<&'static u8> = Some(&CONF[0]);

    /// jemalloc's version string, e.g. `5.3.0-1-ge13ca993…`.
    pub fn version() -> Option<String> {
        let mut p: *const std::ffi::c_char = std::ptr::null();
        let mut len = std::mem::size_of::<*const std::ffi::c_char>();
        // SAFETY: "version" is a read-only `const char *` mallctl; `p` and `len` match it.
        let rc = unsafe { tikv_jemalloc_sys::mallctl(c"version".as_ptr(), (&raw mut p).cast(), &mut len, std::ptr::null_mut(), 0) };
        if rc != 0 || p.is_null() { return None; }
        // SAFETY: jemalloc returns a static NUL-terminated string.
        Some(unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// An `ssize_t` option of jemalloc (`opt.dirty_decay_ms`, …).
    pub fn opt_ssize(name: &std::ffi::CStr) -> Option<isize> {
        let mut v: isize = 0;
        let mut len = std::mem::size_of::<isize>();
        // SAFETY: the caller names an ssize_t mallctl; `v` and `len` match it.
        let rc = unsafe { tikv_jemalloc_sys::mallctl(name.as_ptr(), (&raw mut v).cast(), &mut len, std::ptr::null_mut(), 0) };
        (rc == 0).then_some(v)
    }

    /// The address of jemalloc's `malloc` in this binary.
    pub fn malloc_addr() -> usize { tikv_jemalloc_sys::malloc as *const () as usize }
}

/// Size from which jemalloc serves a block from a page run of its own (its smallest "large"
/// size class, 4 pages of 4 KiB) rather than from a slab; only such blocks are zeroed by
/// purging.
pub const LARGE_BLOCK: usize = 16 << 10;

/// Rust's global allocator for binaries linked with kestrel (`kestrel`, the data benches):
/// the C allocator ([`System`]), except that a zeroed block of [`LARGE_BLOCK`]
/// bytes or more (`vec![0u8; n]`, `alloc_zeroed`) is allocated with `malloc` and cleared with
/// `memset` instead of `calloc`.
///
/// Why: with the `jemalloc` feature, `calloc` zeroes a block that reuses freed pages by
/// purging them (`madvise(MADV_DONTNEED)`, jemalloc's `ehooks_default_zero_impl`), so the
/// next write faults every page in again. The data loader's per-photo buffers — the decoded
/// photo, the presized image, its planar copy, ~0.6 MB each — went through that cycle for
/// every photo: 0.13 M minor faults and ~0.4 s of kernel time per pets epoch, 2,800
/// `madvise` calls in a 2-epoch run. `memset` of memory jemalloc keeps mapped costs no
/// fault. Without the feature (glibc), `calloc` is used unchanged.
///
/// Install it with `#[global_allocator] static A: kestrel::util::alloc::ZeroByMemset =
/// kestrel::util::alloc::ZeroByMemset;`. It allocates nothing itself and never fails
/// except as `malloc` does (a null pointer).
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroByMemset;

// SAFETY: every method forwards to `System` with the caller's layout; `alloc_zeroed`
// returns either `System`'s zeroed block or a `System` block of that layout that it has
// filled with zeros, so the `GlobalAlloc` contract holds as it does for `System`.
unsafe impl GlobalAlloc for ZeroByMemset {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's (valid, non-zero-size) layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !cfg!(feature = "jemalloc") || layout.size() < LARGE_BLOCK {
            // SAFETY: as `alloc`.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: as `alloc`; a non-null block holds `layout.size()` writable bytes.
        unsafe {
            let p = System.alloc(layout);
            if !p.is_null() {
                p.write_bytes(0, layout.size());
            }
            p
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Which allocator serves the C library's `malloc` family in this process — the one
/// libtorch's CPU tensors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MallocInfo {
    /// `jemalloc 5.3.0-…` when it is kestrel's linked jemalloc, `glibc malloc`, or the
    /// file name of the shared object that defines `malloc` (e.g. an `LD_PRELOAD`ed one).
    pub name: String,
    /// The file that defines the `malloc` the dynamic linker resolves (the executable
    /// itself when linked in), as `dladdr` reports it.
    pub object: String,
    /// True when `malloc` is defined by the executable (not by a shared library).
    pub in_binary: bool,
    /// jemalloc's `opt.dirty_decay_ms` and `opt.muzzy_decay_ms`, when it is kestrel's jemalloc.
    pub decay_ms: Option<(isize, isize)>,
}

impl std::fmt::Display for MallocInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some((d, m)) = self.decay_ms { write!(f, " (dirty_decay_ms {d}, muzzy_decay_ms {m})")?; }
        write!(f, ", {}", if self.in_binary { "linked into the binary".to_string() } else { format!("from {}", self.object) })
    }
}

/// Finds the `malloc` that the dynamic linker resolves for every shared library of the
/// process (`dlsym(RTLD_DEFAULT, "malloc")`) and names its allocator.
///
/// Errors: none; on platforms without `dladdr` the object is `unknown`.
pub fn malloc_in_use() -> MallocInfo {
    #[cfg(unix)]
    let (addr, object) = {
        // SAFETY: dlsym/dladdr with a valid NUL-terminated name and an out-struct; the
        // returned file name is a NUL-terminated string owned by the dynamic linker.
        unsafe {
            let p = libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr());
            let mut info: libc::Dl_info = std::mem::zeroed();
            let object = if !p.is_null() && libc::dladdr(p, &mut info) != 0 && !info.dli_fname.is_null() {
                std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned()
            } else {
                "unknown".to_string()
            };
            (p as usize, object)
        }
    };
    #[cfg(not(unix))]
    let (addr, object) = (0usize, "unknown".to_string());
    let exe = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    let in_binary = exe.as_ref().is_some_and(|e| std::path::Path::new(&object).canonicalize().ok().as_ref() == Some(e));
    #[cfg(feature = "jemalloc")]
    if addr != 0 && addr == imp::malloc_addr() {
        let name = format!("jemalloc {}", imp::version().unwrap_or_default());
        let decay = imp::opt_ssize(c"opt.dirty_decay_ms").zip(imp::opt_ssize(c"opt.muzzy_decay_ms"));
        return MallocInfo { name: name.trim().to_string(), object, in_binary, decay_ms: decay };
    }
    let _ = addr;
    let file = std::path::Path::new(&object).file_name().map_or(object.clone(), |f| f.to_string_lossy().into_owned());
    let name = if file.starts_with("libc.so") { "glibc malloc".to_string() } else { file };
    MallocInfo { name, object, in_binary, decay_ms: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far.
    #[cfg(target_os = "linux")]
    fn thread_minor_faults() -> i64 {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) }, 0);
        r.ru_minflt
    }

    /// 20 rounds of: a zeroed 640 KiB block (a presized 460² photo), checked zero, written
    /// in full, freed. Returns the minor faults of the rounds.
    #[cfg(target_os = "linux")]
    fn zeroed_rounds(a: &dyn GlobalAlloc) -> i64 {
        let layout = Layout::from_size_align(640 << 10, 16).unwrap();
        let before = thread_minor_faults();
        for _ in 0..20 {
            // SAFETY: a non-zero-size layout; the block is used within its size and freed
            // with the same allocator and layout.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                let block = std::slice::from_raw_parts_mut(p, layout.size());
                assert!(block.iter().all(|&b| b == 0), "alloc_zeroed returned a non-zero byte");
                block.fill(0xA5);
                a.dealloc(p, layout);
            }
        }
        thread_minor_faults() - before
    }

    #[cfg(all(feature = "jemalloc", target_os = "linux"))]
    #[test]
    fn zeroed_large_blocks_are_cleared_in_place_not_faulted_in_again() {
        let pages = (640 << 10) / 4096; // 160 per round
        // calloc through jemalloc purges the recycled block, so every round faults it in
        // again (measured: 6,440 faults for 20 rounds, two per page: the zero check maps
        // the shared zero page, the fill then copies it).
        let calloc = zeroed_rounds(&System);
        assert!(calloc >= 18 * pages, "calloc rounds: {calloc} faults");
        // memset keeps the pages mapped: at most the first round's first touch (measured:
        // 0 after the calloc rounds).
        let memset = zeroed_rounds(&ZeroByMemset);
        eprintln!("faults over 20 rounds: calloc {calloc}, ZeroByMemset {memset}");
        assert!(memset <= pages + 16, "ZeroByMemset rounds: {memset} faults");
        // Below LARGE_BLOCK it is calloc, and still zero.
        let small = Layout::from_size_align(LARGE_BLOCK - 1, 16).unwrap();
        // SAFETY: as in zeroed_rounds.
        unsafe {
            let p = ZeroByMemset.alloc_zeroed(small);
            assert!(std::slice::from_raw_parts(p, small.size()).iter().all(|&b| b == 0));
            ZeroByMemset.dealloc(p, small);
        }
    }

    #[cfg(all(feature = "jemalloc", target_os = "linux"))]
    #[test]
    fn libtorch_allocates_through_the_binarys_jemalloc_with_its_config() {
        let m = malloc_in_use();
        assert!(m.name.starts_with("jemalloc 5."), "{m}");
        assert!(m.in_binary, "malloc is defined by the test binary itself: {m}");
        // malloc_conf baked into the binary took effect (unless MALLOC_CONF overrides it).
        if std::env::var_os("MALLOC_CONF").is_none() {
            assert_eq!(m.decay_ms, Some((-1, -1)), "{m}");
        }
        // posix_memalign, what c10's CPU allocator calls, resolves to the same binary.
        // SAFETY: dlsym/dladdr with NUL-terminated names and a zeroed out-struct.
        let object = unsafe {
            let p = libc::dlsym(libc::RTLD_DEFAULT, c"posix_memalign".as_ptr());
            let mut info: libc::Dl_info = std::mem::zeroed();
            assert!(libc::dladdr(p, &mut info) != 0);
            std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned()
        };
        assert_eq!(object, m.object);
        assert!(m.to_string().contains("linked into the binary"), "{m}");
    }
}
