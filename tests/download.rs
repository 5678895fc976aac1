//! Downloads and `untar_data` against a small HTTP server on 127.0.0.1 started by each
//! test: caching, checksum failures, transfers cut in the middle (resumed with Range, or
//! restarted when the server ignores Range), a closed port, tarball extraction.

use kestrel::util::download::{Checksum, download};
use kestrel::util::untar::{PETS_URL, extract_tgz, fastai_check, pets_dir, untar_data_in};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// How the test server misbehaves.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// The first response announces the full length but stops after this many bytes.
    cut_first_at: Option<usize>,
    /// Answer `Range` requests with the whole file (HTTP 200).
    ignore_range: bool,
}

/// Serves `body` at `/<name>` for at most 8 connections; returns the URL and the log of
/// request lines plus Range headers.
fn serve(name: &str, body: Vec<u8>, b: Behaviour) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/{name}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let (log2, path) = (log.clone(), format!("/{name}"));
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().take(8).enumerate() {
            let Ok(mut s) = conn else { continue };
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let (line, range) = read_request(&s);
            log2.lock().unwrap().push(format!("{line} range={range:?}"));
            if !line.contains(&format!(" {path} ")) {
                let _ = s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let start = range
                .filter(|&r| !b.ignore_range && r < body.len())
                .unwrap_or(0);
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len() - 1,
                    body.len(),
                    body.len() - start
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            };
            let end = match b.cut_first_at {
                Some(c) if i == 0 => c,
                _ => body.len(),
            };
            let _ = s
                .write_all(head.as_bytes())
                .and_then(|_| s.write_all(&body[start..end]));
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    (url, log)
}

/// The request line and the start of a `Range: bytes=N-` header.
fn read_request(s: &TcpStream) -> (String, Option<usize>) {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    let mut range = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').parse().ok();
        }
    }
    (line.trim().to_string(), range)
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7919 % 251) as u8).collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn good_file_is_cached_and_verified() {
    let body = data(300_000);
    let (url, log) = serve("model.pth", body.clone(), Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("models/model.pth");
    let check = Checksum::Sha256(sha(&body));
    assert_eq!(download(&url, &dest, Some(&check), false).unwrap(), dest);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(!dir.path().join("models/model.pth.part").exists());
    // Second call: the cached file is checked and used, nothing is fetched.
    let prefix = Checksum::Sha256(sha(&body)[..8].to_string());
    download(&url, &dest, Some(&prefix), false).unwrap();
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[test]
fn hash_prefix_from_torchvision_file_names() {
    let c = Checksum::from_file_name("https://download.pytorch.org/models/resnet18-f37072fd.pth");
    assert_eq!(c, Some(Checksum::Sha256("f37072fd".into())));
    assert_eq!(
        Checksum::from_file_name("https://example.com/model.pth"),
        None
    );
    assert_eq!(
        Checksum::from_file_name("https://example.com/efficientnet-lite0.pth"),
        None
    );
}

#[test]
fn wrong_checksum_deletes_the_file() {
    let body = data(50_000);
    let (url, _) = serve("model.pth", body.clone(), Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.pth");
    let check = Checksum::Sha256("0123456789abcdef".into());
    let err = format!(
        "{:#}",
        download(&url, &dest, Some(&check), false).unwrap_err()
    );
    assert!(
        err.contains(&url)
            && err.contains("damaged")
            && err.contains("deleted")
            && err.contains("0123456789abcdef"),
        "{err}"
    );
    assert!(!dest.exists() && !dir.path().join("model.pth.part").exists());
    // A bad file already in place (put there by hand) is reported, not deleted.
    std::fs::write(&dest, b"junk").unwrap();
    let err = format!(
        "{:#}",
        download(&url, &dest, Some(&check), false).unwrap_err()
    );
    assert!(err.contains("delete") && err.contains("model.pth"), "{err}");
    assert!(dest.exists());
}

#[test]
fn cut_transfer_resumes_with_range() {
    let body = data(400_000);
    let (url, log) = serve(
        "big.bin",
        body.clone(),
        Behaviour {
            cut_first_at: Some(150_000),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big.bin");
    download(&url, &dest, Some(&Checksum::Sha256(sha(&body))), false).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[1].ends_with("range=Some(150000)"), "{log:?}");
}

#[test]
fn cut_transfer_restarts_when_range_is_ignored() {
    let body = data(200_000);
    let b = Behaviour {
        cut_first_at: Some(90_000),
        ignore_range: true,
    };
    let (url, log) = serve("big.bin", body.clone(), b);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big.bin");
    download(&url, &dest, Some(&Checksum::Sha256(sha(&body))), false).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[test]
fn connection_refused_says_where_to_put_the_file() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/resnet18-f37072fd.pth");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("models/resnet18-f37072fd.pth");
    let err = format!(
        "{:#}",
        download(&url, &dest, Checksum::from_file_name(&url).as_ref(), false).unwrap_err()
    );
    assert!(
        err.contains(&url)
            && err.contains("offline")
            && err.contains(&format!("put it at {}", dest.display())),
        "{err}"
    );
    assert!(err.contains("SHA-256 f37072fd"), "{err}");
}

/// A gzipped tar holding `pets/images/a.jpg` and `pets/labels.csv`, plus `extra`
/// entries written with raw names (to forge paths the tar builder refuses).
fn tgz(extra: &[&str]) -> Vec<u8> {
    let mut t = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, content) in [
        ("pets/images/a.jpg", &b"jpeg"[..]),
        ("pets/labels.csv", b"fname,label\na.jpg,cat\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, name, content).unwrap();
    }
    for name in extra {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        t.append(&h, &b"x"[..]).unwrap();
    }
    t.into_inner().unwrap().finish().unwrap()
}

#[test]
fn untar_data_downloads_checks_and_extracts() {
    let archive = tgz(&[]);
    let check = Checksum::SizeMd5 {
        size: archive.len() as u64,
        md5_first_mib: hex::encode(Md5::digest(&archive)),
    };
    let (url, log) = serve("pets.tgz", archive, Behaviour::default());
    let home = tempfile::tempdir().unwrap();
    let dir = untar_data_in(home.path(), &url, Some(&check), false).unwrap();
    assert_eq!(dir, home.path().join("data/pets"));
    assert_eq!(std::fs::read(dir.join("images/a.jpg")).unwrap(), b"jpeg");
    assert!(dir.join("labels.csv").is_file());
    assert!(home.path().join("archive/pets.tgz").is_file());
    // Extracted already: no second download.
    assert_eq!(
        untar_data_in(home.path(), &url, Some(&check), false).unwrap(),
        dir
    );
    assert_eq!(log.lock().unwrap().len(), 1);
    // Nothing but the result is left in data/ (the temporary folder is gone).
    assert_eq!(
        std::fs::read_dir(home.path().join("data")).unwrap().count(),
        1
    );
}

#[test]
fn untar_refuses_paths_leaving_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("evil.tgz");
    std::fs::write(&archive, tgz(&["../escape.txt"])).unwrap();
    let err = format!(
        "{:#}",
        extract_tgz(&archive, &dir.path().join("data")).unwrap_err()
    );
    assert!(
        err.contains("refusing") && err.contains("escape.txt"),
        "{err}"
    );
    assert!(!dir.path().join("escape.txt").exists());
    // A damaged archive is an error, not a panic.
    std::fs::write(&archive, &tgz(&[])[..40]).unwrap();
    assert!(extract_tgz(&archive, &dir.path().join("data2")).is_err());
}

#[test]
fn pets_folder_and_fastai_record() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(pets_dir(Some(dir.path()), false).unwrap(), dir.path());
    let err = pets_dir(Some(&dir.path().join("nope")), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("does not exist"),
        "{err}"
    );
    // fastai/data/download_checks.py: size and MD5 of the first MiB of URLs.PETS.
    let want = Checksum::SizeMd5 {
        size: 811_706_944,
        md5_first_mib: "e4db5c768afd933bb91f5f594d7417a4".into(),
    };
    assert_eq!(fastai_check(PETS_URL), Some(want));
}

#[test]
fn untar_refuses_links_leaving_the_folder_and_bombs() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("links.tgz");
    for (target, kind) in [("/etc/passwd", tar::EntryType::Symlink), ("../../outside", tar::EntryType::Symlink), ("../x", tar::EntryType::Link)] {
        let mut t = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        t.append_link(&mut h, "pets/evil", target).unwrap();
        std::fs::write(&archive, t.into_inner().unwrap().finish().unwrap()).unwrap();
        let err = format!("{:#}", extract_tgz(&archive, &dir.path().join("data")).unwrap_err());
        assert!(err.contains("refusing") && err.contains("pets/evil"), "{target}: {err}");
    }
    // 100,000 empty files: 51 MB of tar headers from a ~100 kB archive, bounded to 10 MB.
    let mut t = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best()));
    for i in 0..100_000 {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        t.append_data(&mut h, format!("b/{i}"), &[][..]).unwrap();
    }
    let bomb = t.into_inner().unwrap().finish().unwrap();
    std::fs::write(&archive, &bomb).unwrap();
    let data = dir.path().join("bomb");
    let err = format!("{:#}", kestrel::util::untar::extract_tgz_limited(&archive, &data, 10 << 20).unwrap_err());
    assert!(err.contains("refusing to extract more than 10485760 bytes"), "{err}");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "the partial extraction is removed");
    assert_eq!(kestrel::util::untar::max_extracted_bytes(800 << 20), 25600 << 20);
}
