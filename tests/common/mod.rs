//! Shared by the kestrel-serve tests: a small ResNet-18 exported to ONNX at random
//! initialisation (72 → 64 px, 4 classes), an in-process server on 127.0.0.1, and
//! hand-written HTTP requests (so that malformed and slow ones can be sent too).
#![allow(dead_code)]

use image::{Rgb, RgbImage};
use kestrel::export::onnx::onnx_model;
use kestrel::export::{ArchSpec, InferenceTransforms, ModelCard, ModelMeta};
use kestrel::models::{Arch, VisionModel};
use kestrel_serve::http::{HttpOptions, serve};
use kestrel_serve::model::OnnxModel;
use prost::Message;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;
use tch::Device;

pub fn onnx_bytes() -> Vec<u8> {
    tch::manual_seed(3);
    let arch = Arch::Resnet18;
    let model = VisionModel::new(arch, 4, Device::Cpu).unwrap();
    let norm = arch.normalization();
    let meta = ModelMeta {
        card: ModelCard {
            arch: ArchSpec { name: arch.name().into(), n_out: 4, hyper: serde_json::Value::Null },
            vocab: ["cat", "dog", "bird", "fish"].map(String::from).to_vec(),
            transforms: InferenceTransforms {
                presize: 72,
                size: 64,
                resize_method: "crop".into(),
                pad_mode: "reflection".into(),
                mean: norm.mean.map(f64::from),
                std: norm.std.map(f64::from),
                augment: None,
            },
            training: None,
            output: Default::default(),
            calibration: None,
        },
        kestrel_version: "test".into(),
        weights_sha256: String::new(),
    };
    onnx_model(&model, &meta).unwrap().encode_to_vec()
}

/// A server on 127.0.0.1 (any free port) in its own thread; stops when the returned
/// sender is dropped or sent to.
pub struct Server {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(opts: HttpOptions) -> Option<Server> {
        if let Err(e) = kestrel_serve::model::init_runtime(None) {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "onnxruntime missing with CI=true: {e:#}");
            eprintln!("skipped: needs onnxruntime ({e:#})");
            return None;
        }
        let model = OnnxModel::from_bytes(&onnx_bytes(), Path::new("test.onnx"), 1).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                serve(model, listener, opts, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let port = port_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        Some(Server { port, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A response: status, lower-cased header lines, body.
pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub fn read_response(mut s: TcpStream) -> Resp {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..split]).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Resp { status, headers: head, body: buf[split + 4..].to_vec() }
}

/// Sends `method path` with `content_type` (if any) and `body`; `Connection: close`.
pub fn request(port: u16, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let ct = content_type.map(|c| format!("Content-Type: {c}\r\n")).unwrap_or_default();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body); // the server may answer (413) before reading everything
    read_response(s)
}

pub fn encode(img: &image::DynamicImage, f: image::ImageFormat) -> Vec<u8> {
    let mut v = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut v), f).unwrap();
    v
}

pub fn photo(seed: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(120, 90, |x, y| Rgb([(x * 2 + seed) as u8, (y * 3) as u8, ((x + y + seed) % 255) as u8]));
    encode(&img.into(), image::ImageFormat::Jpeg)
}

pub fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "kestrelboundary7";
    let mut body = Vec::new();
    for (name, ct, data) in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: {ct}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

