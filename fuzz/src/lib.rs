//! What every kestrel fuzz target shares: a counting global allocator that turns any single
//! allocation above [`MAX_ALLOC`] into a crash (with `--sanitizer none`, libFuzzer's own
//! `-malloc_limit_mb` does not work), and a scratch folder for targets that need files.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Largest single allocation a parser may make on fuzzed input: 1 GiB.
pub const MAX_ALLOC: usize = 1 << 30;

/// Bytes currently allocated and the most ever allocated at once.
pub static LIVE: AtomicUsize = AtomicUsize::new(0);
/// See [`LIVE`].
pub static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting, and aborting (a libFuzzer crash) on a request above
/// [`MAX_ALLOC`] or when more than 2 GiB are live at once.
pub struct Counting;

fn note(size: usize) {
    if size > MAX_ALLOC {
        report(size, "a single allocation");
    }
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
    if live > 2 * MAX_ALLOC {
        report(live, "live allocations");
    }
}

fn report(size: usize, what: &str) -> ! {
    // No allocation here: write the message with a fixed buffer.
    let mut buf = [0u8; 96];
    let mut n = size;
    let mut digits = [0u8; 24];
    let mut k = 0;
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 { break; }
    }
    let head = b"kestrel-fuzz: ";
    let mut i = 0;
    for &b in head.iter().chain(what.as_bytes()).chain(b" of ".iter()) {
        if i < buf.len() { buf[i] = b; i += 1; }
    }
    for j in (0..k).rev() {
        if i < buf.len() { buf[i] = digits[j]; i += 1; }
    }
    for &b in b" bytes (above 1 GiB)\n" {
        if i < buf.len() { buf[i] = b; i += 1; }
    }
    unsafe { libc_write(2, buf.as_ptr(), i) };
    std::process::abort();
}

unsafe extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, n: usize) -> isize;
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        note(new);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A scratch folder for this process (in /dev/shm when it exists: no disk writes per input).
pub fn scratch() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        tempfile::Builder::new().prefix("kestrel-fuzz-").tempdir_in(base).expect("a scratch folder")
    })
    .path()
}
