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
//! the binary through jemalloc's `malloc_conf` symbol ([`MALLOC_CONF`]): freed pages are
//! kept for reuse instead of being returned to the OS, so the process's memory stays at
//! its peak use and a training step faults no page in. `MALLOC_CONF` in the environment
//! still overrides it (jemalloc reads the variable last).

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
