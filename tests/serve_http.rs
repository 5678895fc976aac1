//! kestrel-serve's HTTP API on 127.0.0.1 only, with a small ResNet-18 exported to ONNX at
//! random initialisation (72 → 64 px, so forward passes are fast): a bounded load test
//! (400 requests, 16 at a time), overload answered with 503, at least 20 bad requests each
//! answered with a 4xx JSON error naming the problem, and the valid oddities predicted.

mod common;
#[path = "common/exif.rs"]
mod exif;

use common::{Resp, Server, encode, multipart, photo, read_response, request};
use image::{GrayImage, ImageBuffer, Rgb, RgbImage, Rgba, RgbaImage};
use exif::exif_rotated_jpeg;
use kestrel_serve::http::HttpOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn forward_passes(port: u16) -> u64 {
    let m = String::from_utf8(request(port, "GET", "/metrics", None, b"").body).unwrap();
    m.lines().find_map(|l| l.strip_prefix("kestrel_forward_passes_total ")).unwrap().parse().unwrap()
}

#[test]
fn load_test_batches_and_overload_answers_503() {
    let Some(server) = Server::start(HttpOptions { max_batch: 16, max_wait: Duration::from_millis(10), ..HttpOptions::default() }) else { return };
    let port = server.port;
    assert_eq!(request(port, "GET", "/readyz", None, b"").status, 200);
    let before = forward_passes(port);
    let t0 = Instant::now();
    let threads: Vec<_> = (0..16u32)
        .map(|t| {
            std::thread::spawn(move || {
                let body = photo(t);
                (0..25)
                    .map(|_| {
                        let t = Instant::now();
                        let r = request(port, "POST", "/predict", Some("image/jpeg"), &body);
                        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                        let j = r.json();
                        assert_eq!(j["predictions"][0]["top"].as_array().unwrap().len(), 3);
                        assert_eq!(j["model_sha256"].as_str().unwrap().len(), 64);
                        t.elapsed().as_secs_f64()
                    })
                    .collect::<Vec<f64>>()
            })
        })
        .collect();
    let mut lat: Vec<f64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let total = t0.elapsed();
    lat.sort_by(f64::total_cmp);
    let passes = forward_passes(port) - before;
    println!(
        "400 requests, 16 at a time: {:.1} s, p50 {:.1} ms, p99 {:.1} ms, {passes} forward passes",
        total.as_secs_f64(),
        lat[199] * 1e3,
        lat[395] * 1e3
    );
    assert_eq!(lat.len(), 400);
    assert!(total < Duration::from_secs(60), "the load test took {total:?}");
    assert!(passes < 400, "{passes} forward passes for 400 requests: no batching");
    let metrics = String::from_utf8(request(port, "GET", "/metrics", None, b"").body).unwrap();
    assert!(metrics.contains("kestrel_batch_size_bucket") && metrics.contains("kestrel_request_duration_seconds_bucket"));
    drop(server);

    // Overload: 2 requests at a time and a queue of 1; 32 at once must see 503s, never a crash.
    let Some(server) = Server::start(HttpOptions { concurrency: 2, queue: 1, max_batch: 1, ..HttpOptions::default() }) else { return };
    let port = server.port;
    let threads: Vec<_> = (0..32u32).map(|t| std::thread::spawn(move || request(port, "POST", "/predict", Some("image/jpeg"), &photo(t)))).collect();
    let resps: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<&Resp> = resps.iter().filter(|r| r.status == 503).collect();
    println!("overload: {} of 32 answered 503", busy.len());
    assert!(!busy.is_empty(), "no 503 under overload");
    assert!(resps.iter().all(|r| r.status == 200 || r.status == 503));
    assert!(busy.iter().all(|r| r.headers.contains("retry-after: 1") && r.json()["error"].is_string()));
    assert_eq!(request(port, "GET", "/healthz", None, b"").status, 200);
}

#[test]
fn bad_requests_get_4xx_json_and_oddities_are_predicted() {
    let opts = HttpOptions { body_timeout: Duration::from_millis(1500), ..HttpOptions::default() };
    let Some(server) = Server::start(opts) else { return };
    let port = server.port;
    let jpg = photo(1);
    let mut png_bomb = encode(&RgbImage::new(1, 1).into(), image::ImageFormat::Png);
    png_bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes()); // IHDR width
    png_bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes()); // IHDR height
    fix_ihdr_crc(&mut png_bomb);
    let mut zero = encode(&RgbImage::new(1, 1).into(), image::ImageFormat::Png);
    zero[16..20].copy_from_slice(&0u32.to_be_bytes());
    fix_ihdr_crc(&mut zero);
    let mut corrupt_png = encode(&RgbImage::from_pixel(32, 32, Rgb([9, 9, 9])).into(), image::ImageFormat::Png);
    let n = corrupt_png.len();
    corrupt_png[n - 30..n - 16].fill(0xAB);
    let bmp = encode(&RgbImage::new(30, 30).into(), image::ImageFormat::Bmp);
    let (mp_ct, mp_text) = multipart(&[("notes.txt", "text/plain", b"hello")]);
    let (_, mp_empty) = multipart(&[]);
    let huge = vec![0u8; 50 * 1024 * 1024];
    let cases: Vec<(&str, &str, Option<&str>, Vec<u8>, u16, &str)> = vec![
        ("empty body", "/predict", Some("image/jpeg"), vec![], 400, "empty"),
        ("no content type", "/predict", None, jpg.clone(), 415, "Content-Type"),
        ("text/plain", "/predict", Some("text/plain"), b"a cat".to_vec(), 415, "text/plain"),
        ("json", "/predict", Some("application/json"), b"{}".to_vec(), 415, "application/json"),
        ("truncated JPEG", "/predict", Some("image/jpeg"), jpg[..jpg.len() / 2].to_vec(), 422, "truncated"),
        ("PNG bomb header", "/predict", Some("image/png"), png_bomb, 413, "pixels"),
        ("0 x 0 PNG", "/predict", Some("image/png"), zero, 422, "image"),
        ("text as image", "/predict", Some("image/png"), b"this is not an image at all".to_vec(), 422, "not an image"),
        ("random bytes", "/predict", Some("image/jpeg"), (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect(), 422, "image"),
        ("JPEG header only", "/predict", Some("image/jpeg"), vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 16], 422, "JPEG"),
        ("corrupt PNG data", "/predict", Some("image/png"), corrupt_png, 422, "Png"),
        ("truncated BMP", "/predict", Some("image/bmp"), bmp[..bmp.len() / 3].to_vec(), 422, "Bmp"),
        ("GIF signature only", "/predict", Some("image/gif"), b"GIF89a".to_vec(), 422, "image"),
        ("webp garbage", "/predict", Some("image/webp"), b"RIFF\x10\0\0\0WEBPVP8 garbage".to_vec(), 422, "image"),
        ("multipart, no parts", "/predict", Some(mp_ct.as_str()), mp_empty, 400, "no parts"),
        ("multipart, text part", "/predict", Some(mp_ct.as_str()), mp_text, 422, "notes.txt"),
        ("multipart, no boundary", "/predict", Some("multipart/form-data"), b"--x\r\n".to_vec(), 400, "multipart"),
        ("multipart, broken body", "/predict", Some(mp_ct.as_str()), b"--kestrelboundary7\r\nnonsense".to_vec(), 400, "multipart"),
        ("50 MB body", "/predict", Some("image/jpeg"), huge, 413, "limit"),
        ("GET /predict", "/predict", None, vec![], 405, "POST"),
        ("unknown path", "/nope", Some("image/jpeg"), jpg.clone(), 404, "no such endpoint"),
    ];
    for (what, path, ct, body, status, needle) in &cases {
        let method = if *what == "GET /predict" { "GET" } else { "POST" };
        let r = if body.len() > 20 * 1024 * 1024 {
            // Announce the whole body, send its first MB: the server answers from the
            // Content-Length (writing all of it after the answer would race the close).
            let mut st = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", body.len());
            st.write_all(head.as_bytes()).unwrap();
            let _ = st.write_all(&body[..1 << 20]);
            read_response(st)
        } else {
            request(port, method, path, *ct, body)
        };
        let j = r.json();
        let msg = j["error"].as_str().unwrap_or_else(|| panic!("{what}: no error message in {j}"));
        println!("{what}: {} {msg}", r.status);
        assert_eq!(r.status, *status, "{what}: {msg}");
        assert!(msg.to_lowercase().contains(&needle.to_lowercase()), "{what}: '{msg}' does not mention '{needle}'");
    }
    // A raw file upload as many clients send it: the bytes say what image it is.
    let r = request(port, "POST", "/predict", Some("application/octet-stream"), &jpg);
    assert_eq!(r.status, 200, "octet-stream: {}", r.json());
    assert!(r.json()["predictions"][0]["label"].is_string());
    // A body sent byte by byte, slower than the body deadline: 408.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", jpg.len()).as_bytes()).unwrap();
    for b in &jpg[..25] {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = read_response(s);
    println!("byte by byte: {} {}", r.status, r.json()["error"]);
    assert_eq!(r.status, 408);
    assert_eq!(cases.len() + 1, 22);
    assert_eq!(request(port, "GET", "/healthz", None, b"").status, 200, "healthz after the bad requests");

    // Valid oddities are predicted.
    let cmyk = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/interpret/cmyk.jpg")).unwrap();
    let png16: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(50, 40, |x, y| Rgb([x as u16 * 1000, y as u16 * 1500, 30000]));
    let gray = GrayImage::from_fn(50, 40, |x, y| image::Luma([(x * 4 + y) as u8]));
    let rgba = RgbaImage::from_fn(50, 40, |x, y| Rgba([x as u8 * 5, y as u8 * 6, 90, (x * 3) as u8]));
    let gif = encode(&RgbImage::from_fn(50, 40, |x, y| Rgb([(x * 40 % 256) as u8, (y * 60 % 256) as u8, 0])).into(), image::ImageFormat::Gif);
    let exif = exif_rotated_jpeg(&RgbImage::from_fn(64, 40, |x, y| Rgb([x as u8 * 3, y as u8 * 5, 60])), 6);
    let oddities: Vec<(&str, &str, Vec<u8>)> = vec![
        ("CMYK JPEG", "image/jpeg", cmyk),
        ("16-bit PNG", "image/png", encode(&png16.into(), image::ImageFormat::Png)),
        ("grayscale PNG", "image/png", encode(&gray.into(), image::ImageFormat::Png)),
        ("RGBA PNG", "image/png", encode(&rgba.into(), image::ImageFormat::Png)),
        ("palette GIF", "image/gif", gif),
        ("EXIF-rotated JPEG", "image/jpeg", exif),
    ];
    for (what, ct, body) in &oddities {
        let r = request(port, "POST", "/predict", Some(ct), body);
        assert_eq!(r.status, 200, "{what}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["predictions"][0]["label"].is_string(), "{what}");
    }
    // Several images in one multipart request: one prediction each, in order.
    let (ct, body) = multipart(&[("a.jpg", "image/jpeg", &jpg), ("b.jpg", "image/jpeg", &photo(9))]);
    let j = request(port, "POST", "/predict", Some(&ct), &body).json();
    let names: Vec<&str> = j["predictions"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a.jpg", "b.jpg"]);
    let page = request(port, "GET", "/", None, b"");
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("id=\"drop\"") && !html.contains("http://") && !html.contains("https://"), "the page must work offline");
}

/// Rewrites the CRC-32 of a PNG's IHDR chunk (bytes 12..29: type + 13 data bytes) after
/// its width or height was edited, so that the decoder reads the header as valid.
fn fix_ihdr_crc(png: &mut [u8]) {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in &png[12..29] {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    png[29..33].copy_from_slice(&(!crc).to_be_bytes());
}

/// A client that sends half its headers and stops is disconnected after the header
/// deadline (`--header-timeout-s`; it was held forever: axum::serve sets no timer for
/// hyper's header_read_timeout), while other clients are answered.
#[test]
fn unfinished_headers_are_cut_off_at_the_header_timeout() {
    let opts = HttpOptions { header_timeout: Duration::from_secs(1), ..HttpOptions::default() };
    let Some(server) = Server::start(opts) else { return };
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.write_all(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    assert_eq!(request(server.port, "GET", "/healthz", None, b"").status, 200, "others are served meanwhile");
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest); // ends when the server closes the connection
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(5), "closed after {took:?}");
}
