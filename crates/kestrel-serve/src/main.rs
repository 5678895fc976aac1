//! `kestrel-serve`: runs a kestrel model exported to ONNX (`kestrel export MODEL --format
//! onnx`) with onnxruntime, without libtorch.
//!
//! - `kestrel-serve predict MODEL.onnx FILES|FOLDERS…` prints the JSON lines of
//!   `kestrel predict --json`.
//! - `kestrel-serve http MODEL.onnx [--host 127.0.0.1] [--port 8080]` serves the JSON
//!   API and the drag-and-drop page (see [`kestrel_serve::http`]).

use kestrel_serve::{http, model, predict};
use std::time::Duration;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// kestrel-serve: predictions of a kestrel ONNX model with onnxruntime (no libtorch).
#[derive(Parser, Debug)]
#[command(name = "kestrel-serve", version, about)]
struct Cli {
    /// The onnxruntime library (default: beside this binary, else the onnxruntime wheel in
    /// kestrel's virtual environment).
    #[arg(long, global = true, env = "ORT_DYLIB_PATH", value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    /// onnxruntime intra-op threads (0: one per core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// The image size limits, as in `kestrel` (`--max-image-pixels`, `--max-image-ratio`).
    #[command(flatten)]
    image_limits: kestrel_image::decode::ImageLimitArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Predict photos: one JSON line per photo, as `kestrel predict --json`.
    Predict {
        /// The .onnx model followed by photos or folders of photos.
        #[arg(required = true, num_args = 2.., value_name = "MODEL.onnx|PHOTO")]
        paths: Vec<PathBuf>,
        /// Number of most probable classes per photo.
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        topk: usize,
        /// Photos per forward pass.
        #[arg(long, default_value_t = 64, value_parser = at_least_one)]
        bs: usize,
        /// Threads decoding photos (default: the number of CPUs).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
        /// Answer `unknown` when no class reaches this probability, as `kestrel predict
        /// --min-prob` (0 turns it off). The photo's top classes are still listed.
        #[arg(long, value_name = "P", default_value_t = kestrel_image::answer::DEFAULT_MIN_PROB)]
        min_prob: f64,
    },
    /// Serve the model over HTTP: POST /predict, GET / (drag-and-drop page), /healthz,
    /// /readyz, /metrics. SIGTERM or Ctrl-C drains the requests in flight, then exits.
    Http {
        /// The .onnx model.
        #[arg(value_name = "MODEL.onnx")]
        model: PathBuf,
        /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (0: any free port; the chosen one is printed).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Most images per forward pass (micro-batching).
        #[arg(long, default_value_t = 16, value_parser = at_least_one)]
        max_batch: usize,
        /// Longest wait in milliseconds for more images after the first of a batch.
        #[arg(long, default_value_t = 5)]
        max_wait_ms: u64,
        /// Images that may wait for inference; beyond, 503 with Retry-After.
        #[arg(long, default_value_t = 256, value_parser = at_least_one)]
        queue: usize,
        /// Largest request body in MB.
        #[arg(long, default_value_t = 20, value_parser = at_least_one)]
        max_body_mb: usize,
        /// Largest image in pixels (width x height), checked from the header before decoding.
        #[arg(long, default_value_t = 40_000_000)]
        max_pixels: u64,
        /// Deadline of a whole request in seconds (then 504).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_s: u64,
        /// Deadline for receiving a request body in seconds (then 408).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        body_timeout_s: u64,
        /// Deadline for a request's headers in seconds, from the connection's start or its
        /// previous request; then the connection is closed (slow or silent clients).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        header_timeout_s: u64,
        /// Requests handled at once; beyond, 503 with Retry-After.
        #[arg(long, default_value_t = 64, value_parser = at_least_one)]
        concurrency: usize,
        /// Classes returned per image.
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        topk: usize,
        /// Label `unknown` (index null) when no class reaches this probability, as `kestrel
        /// predict --min-prob` (0 turns it off).
        #[arg(long, value_name = "P", default_value_t = kestrel_image::answer::DEFAULT_MIN_PROB)]
        min_prob: f64,
    },
}

/// A count that must be at least 1 (`--topk`, `--bs`, `--max-batch`, `--queue`,
/// `--concurrency`, `--max-body-mb`): 0 is refused rather than read as 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number of at least 1, got '{s}'")),
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.image_limits.apply();
    model::init_runtime(cli.ort_lib.as_deref())?;
    match cli.command {
        Command::Predict { paths, topk, bs, workers, min_prob } => {
            let (model_path, inputs) = paths.split_first().expect("clap requires 2 paths");
            let mut m = model::OnnxModel::load(model_path, cli.threads)?;
            let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            predict::run(&mut m, inputs, bs, workers, topk, min_prob)
        }
        Command::Http { model, host, port, max_batch, max_wait_ms, queue, max_body_mb, max_pixels, timeout_s, body_timeout_s, header_timeout_s, concurrency, topk, min_prob } => {
            kestrel_image::answer::check_min_prob(min_prob)?;
            let m = model::OnnxModel::load(&model, cli.threads)?;
            let opts = http::HttpOptions {
                max_batch,
                max_wait: Duration::from_millis(max_wait_ms),
                queue,
                max_body: max_body_mb * 1024 * 1024,
                max_pixels,
                timeout: Duration::from_secs(timeout_s),
                body_timeout: Duration::from_secs(body_timeout_s),
                header_timeout: Duration::from_secs(header_timeout_s),
                concurrency,
                topk,
                min_prob,
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind((host.as_str(), port))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
                eprintln!("kestrel-serve: {} ({} classes) on http://{}", model.display(), m.info.vocab.len(), listener.local_addr()?);
                http::serve(m, listener, opts, shutdown_signal()).await?;
                eprintln!("kestrel-serve: stopped");
                Ok(())
            })
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("kestrel-serve: shutting down, finishing the requests in flight");
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
