//! `kestrel-serve http MODEL.onnx`: the JSON API, the drag-and-drop page and the
//! operational endpoints, with micro-batching and limits.
//!
//! - `POST /predict`: an image body (`Content-Type: image/*`) or `multipart/form-data`
//!   with one or more images. Answer: `{"model_sha256", "latency_ms", "predictions":
//!   [{"name", "label", "index", "top": [{"label", "index", "prob"}]}]}`.
//! - `GET /`: the drag-and-drop page (self-contained: no CDN, no fonts).
//! - `GET /healthz` (the process answers), `GET /readyz` (the model is loaded and warmed
//!   up), `GET /metrics` (Prometheus text).
//!
//! Decoding and presizing run on tokio's blocking pool; ONE inference thread owns the
//! onnxruntime session and groups queued images into batches of up to `max_batch`,
//! waiting at most `max_wait` for more after the first (micro-batching). A full queue
//! answers 503 with `Retry-After`. Every error is a JSON `{"error": "..."}` with a 4xx or
//! 5xx status.

use crate::metrics::Metrics;
use crate::model::{OnnxModel, preprocess};
use crate::predict::answer;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use kestrel_image::decode::DecodeLimits;
use kestrel_image::resize::ItemTfm;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};

/// Options of `kestrel-serve http` (each a command-line flag).
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Most images per forward pass (`--max-batch`).
    pub max_batch: usize,
    /// Longest wait for more images after the first of a batch (`--max-wait-ms`).
    pub max_wait: Duration,
    /// Images that may wait for the inference worker; beyond, 503 (`--queue`).
    pub queue: usize,
    /// Largest request body in bytes (`--max-body-mb`, 20 MB).
    pub max_body: usize,
    /// Largest image in pixels, checked from its header before decoding (`--max-pixels`).
    pub max_pixels: u64,
    /// Whole-request deadline (`--timeout-s`); past it, 504.
    pub timeout: Duration,
    /// Deadline for receiving the body (`--body-timeout-s`); past it, 408.
    pub body_timeout: Duration,
    /// Deadline for a request's header block, from the connection's start or the end of
    /// its previous request (`--header-timeout-s`); past it, the connection is closed (a
    /// client sending headers slowly, or not at all, would otherwise hold it forever).
    pub header_timeout: Duration,
    /// Requests handled at once (`--concurrency`); beyond, 503.
    pub concurrency: usize,
    /// Classes returned per image (`--topk`).
    pub topk: usize,
    /// Below this top probability the label is `unknown` and the index `null`, as
    /// `kestrel predict --min-prob` answers (`--min-prob`, default 0.5; 0 turns it off).
    pub min_prob: f64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_wait: Duration::from_millis(5),
            queue: 256,
            max_body: 20 * 1024 * 1024,
            max_pixels: 40_000_000,
            timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            concurrency: 64,
            topk: 3,
            min_prob: kestrel_image::answer::DEFAULT_MIN_PROB,
        }
    }
}

struct Job {
    pixels: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

struct AppState {
    opts: HttpOptions,
    jobs: SyncSender<Job>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    vocab: Vec<String>,
    /// A multi-label model's threshold ([`crate::model::ModelInfo::thresh`]).
    thresh: Option<f64>,
    sha256: String,
    item_tfm: ItemTfm,
    limits: DecodeLimits,
    permits: Semaphore,
}

/// An error answer: status and message, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self(status, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, axum::Json(serde_json::json!({"error": self.1}))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// The inference worker: waits for a first image, gathers more for up to `max_wait`
/// (or until `max_batch`), runs them as one batch and answers each.
fn worker(mut model: OnnxModel, rx: Receiver<Job>, max_batch: usize, max_wait: Duration, metrics: Arc<Metrics>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + max_wait;
        while jobs.len() < max_batch {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(j) => jobs.push(j),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let n = jobs.len();
        let mut pixels = Vec::with_capacity(n * jobs[0].pixels.len());
        for j in &jobs {
            pixels.extend_from_slice(&j.pixels);
        }
        metrics.forward(n);
        match model.probs(pixels, n) {
            Ok(rows) => {
                for (j, row) in jobs.into_iter().zip(rows) {
                    let _ = j.reply.send(Ok(row));
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(format!("inference failed: {e:#}")));
                }
            }
        }
    }
}

/// Starts the inference worker for `model` (warming it up with one forward pass) and
/// serves the API on `listener` until `shutdown` resolves; then stops accepting, lets
/// the requests in flight finish, and returns.
///
/// Errors: the warm-up forward pass fails, or the server fails.
pub async fn serve(
    model: OnnxModel,
    listener: tokio::net::TcpListener,
    opts: HttpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Arc<Metrics>> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let info = model.info.clone();
    let (tx, rx) = sync_channel::<Job>(opts.queue.max(1));
    {
        let (m, mb, mw) = (metrics.clone(), opts.max_batch.max(1), opts.max_wait);
        let mut model = model;
        let p = info.presize as usize;
        model.probs(vec![0; 3 * p * p], 1)?;
        std::thread::Builder::new().name("inference".into()).spawn(move || worker(model, rx, mb, mw, m))?;
    }
    ready.store(true, Ordering::SeqCst);
    let header_timeout = opts.header_timeout;
    let state = Arc::new(AppState {
        limits: DecodeLimits { max_pixels: opts.max_pixels, ..DecodeLimits::default() },
        permits: Semaphore::new(opts.concurrency.max(1)),
        opts,
        jobs: tx,
        metrics: metrics.clone(),
        ready,
        vocab: info.vocab,
        thresh: info.thresh,
        sha256: info.sha256,
        item_tfm: info.item_tfm,
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/predict", post(predict))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint: use POST /predict, GET /, /healthz, /readyz or /metrics") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: POST /predict; GET /, /healthz, /readyz, /metrics")
        })
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }))
        .with_state(state);
    serve_connections(listener, app, header_timeout, shutdown).await;
    Ok(metrics)
}

/// Accepts HTTP/1.1 connections on `listener` and serves `app` on each with hyper's
/// `header_read_timeout` (which needs a timer, and `axum::serve` installs none) until
/// `shutdown` resolves; then stops accepting, closes idle connections and waits for the
/// requests in flight (hyper-util's `GracefulShutdown`).
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait for connections to close.
                    eprintln!("kestrel-serve: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), hyper_util::service::TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    graceful.shutdown().await;
}

/// Counts every request and its latency for `/metrics`.
async fn count(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = match req.uri().path() {
        p @ ("/" | "/healthz" | "/readyz" | "/metrics" | "/predict") => p.to_owned(),
        _ => "other".to_owned(),
    };
    let t0 = Instant::now();
    let r = next.run(req).await;
    s.metrics.request(&path, r.status().as_u16(), t0.elapsed().as_secs_f64());
    r
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        axum::Json(serde_json::json!({"status": "ready", "model_sha256": s.sha256})).into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is loading").into_response()
    }
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn predict(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let t0 = Instant::now();
    let Ok(_permit) = s.permits.try_acquire() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many requests at once; retry shortly").into_response();
    };
    match tokio::time::timeout(s.opts.timeout, handle(&s, &headers, body)).await {
        Ok(Ok(preds)) => axum::Json(serde_json::json!({
            "model_sha256": s.sha256,
            "latency_ms": (t0.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            "predictions": preds,
        }))
        .into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("the request took longer than {:?}", s.opts.timeout)).into_response(),
    }
}

async fn handle(s: &Arc<AppState>, headers: &HeaderMap, body: Body) -> Result<Vec<serde_json::Value>, ApiError> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    body_kind(&ctype)?;
    let bytes = read_body(s, headers, body).await?;
    let images = request_images(&ctype, bytes).await?;
    let mut waits = Vec::with_capacity(images.len());
    for (name, data) in &images {
        let (st, data2) = (s.clone(), data.clone());
        let pixels = tokio::task::spawn_blocking(move || preprocess(&data2, &st.item_tfm, &st.limits))
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "decoding crashed"))?
            .map_err(|e| {
                let msg = format!("{e:#}");
                let status = if msg.contains("pixels, more than the limit") || msg.contains("Limit") {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                ApiError::new(status, format!("{name}: cannot use the image: {msg}"))
            })?;
        let (reply, wait) = oneshot::channel();
        match s.jobs.try_send(Job { pixels, reply }) {
            Ok(()) => waits.push((name.clone(), wait)),
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the inference queue is full; retry shortly"));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the inference worker has stopped"));
            }
        }
    }
    let mut out = Vec::with_capacity(waits.len());
    for (name, wait) in waits {
        let probs = wait
            .await
            .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the inference worker has stopped"))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let mut j = answer(&probs, &s.vocab, s.thresh, s.opts.topk, s.opts.min_prob);
        j.as_object_mut().expect("an object").insert("name".into(), name.into());
        out.push(j);
    }
    Ok(out)
}

/// Whether a `/predict` body is one image (`image/*`, or `application/octet-stream`, which
/// many clients send for a raw file: the decoder reads the format from the bytes) or a
/// `multipart/form-data` form (media types compare case-insensitively, RFC 9110 §8.3.1);
/// any other Content-Type is refused (415) before the body is read.
fn body_kind(ctype: &str) -> Result<bool, ApiError> {
    let lower = ctype.trim_start().to_ascii_lowercase();
    if lower.starts_with("image/") || lower.starts_with("application/octet-stream") {
        Ok(true)
    } else if lower.starts_with("multipart/form-data") {
        Ok(false)
    } else {
        let got = if ctype.is_empty() { "no Content-Type".to_owned() } else { format!("Content-Type '{ctype}'") };
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{got}: send an image (Content-Type: image/jpeg, image/png, ..., or application/octet-stream) or multipart/form-data with images"),
        ))
    }
}

/// The encoded images of a `/predict` request body, each with its name: the whole body
/// (named "image") for `Content-Type: image/*`, or every part of a `multipart/form-data`
/// body (named by its file name, else its field name, else "image"), in order. Nothing is
/// decoded here (see [`crate::model::preprocess`]).
///
/// Errors, as the HTTP reply: another Content-Type (415); a missing or bad multipart
/// boundary, a malformed multipart body or one with no parts (400), each naming what is
/// wrong.
pub async fn request_images(ctype: &str, body: Bytes) -> Result<Vec<(String, Bytes)>, ApiError> {
    if body_kind(ctype)? {
        return Ok(vec![("image".to_owned(), body)]);
    }
    let boundary = multer::parse_boundary(ctype).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad multipart Content-Type: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut images = Vec::new();
    while let Some(field) = mp.next_field().await.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad multipart body: {e}")))? {
        let name = field.file_name().or(field.name()).unwrap_or("image").to_owned();
        let data = field.bytes().await.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad multipart part '{name}': {e}")))?;
        images.push((name, data));
    }
    if images.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "the multipart body has no parts: attach at least one image"));
    }
    Ok(images)
}

/// Reads the whole body within the size limit and the slow-body deadline.
async fn read_body(s: &AppState, headers: &HeaderMap, mut body: Body) -> Result<Bytes, ApiError> {
    let max = s.opts.max_body;
    let too_big = |n: String| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is {n} bytes, more than the limit of {max}"));
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(too_big(len.to_string()));
    }
    let deadline = tokio::time::Instant::now() + s.opts.body_timeout;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {:?} ({} bytes received)", s.opts.body_timeout, buf.len()),
            )
        })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(too_big(format!("more than {}", buf.len() + data.len())));
            }
            buf.extend_from_slice(&data);
        }
    }
    if buf.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "the body is empty: send the image's bytes"));
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_compare_case_insensitively() {
        assert!(body_kind("IMAGE/JPEG; charset=binary").unwrap());
        assert!(body_kind("image/png").unwrap());
        assert!(!body_kind("Multipart/Form-Data; boundary=x").unwrap());
        let e = body_kind("text/plain").unwrap_err();
        assert_eq!(e.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.1.contains("text/plain"), "{}", e.1);
    }
}
