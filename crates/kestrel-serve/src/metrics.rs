//! The server's counters and histograms, rendered in Prometheus' text format for
//! `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// A cumulative histogram with fixed upper bounds (Prometheus `histogram`).
#[derive(Debug)]
struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Self { bounds: bounds.to_vec(), counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", self.count, self.sum, self.count);
    }
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: Histogram,
    batch: Histogram,
    forward_passes: u64,
    images: u64,
}

/// Everything `/metrics` reports; shared by the handlers and the inference worker.
#[derive(Debug)]
pub struct Metrics(Mutex<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self(Mutex::new(Inner {
            requests: BTreeMap::new(),
            latency: Histogram::new(&[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            batch: Histogram::new(&[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            forward_passes: 0,
            images: 0,
        }))
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a finished request to `path` with HTTP `status`, taking `seconds`.
    pub fn request(&self, path: &str, status: u16, seconds: f64) {
        let mut m = self.lock();
        *m.requests.entry((path.to_owned(), status)).or_default() += 1;
        m.latency.observe(seconds);
    }

    /// Counts one forward pass over `batch` images.
    pub fn forward(&self, batch: usize) {
        let mut m = self.lock();
        m.forward_passes += 1;
        m.images += batch as u64;
        m.batch.observe(batch as f64);
    }

    /// Forward passes so far.
    pub fn forward_passes(&self) -> u64 {
        self.lock().forward_passes
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str("# HELP kestrel_requests_total HTTP requests by path and status code.\n# TYPE kestrel_requests_total counter\n");
        for ((path, code), n) in &m.requests {
            let _ = writeln!(out, "kestrel_requests_total{{path=\"{path}\",code=\"{code}\"}} {n}");
        }
        let errors: u64 = m.requests.iter().filter(|((_, c), _)| *c >= 400).map(|(_, n)| n).sum();
        let _ = writeln!(out, "# HELP kestrel_request_errors_total HTTP requests answered with a 4xx or 5xx status.\n# TYPE kestrel_request_errors_total counter\nkestrel_request_errors_total {errors}");
        m.latency.render("kestrel_request_duration_seconds", "Time from the request to the response, seconds.", &mut out);
        m.batch.render("kestrel_batch_size", "Images per forward pass of the inference worker.", &mut out);
        let _ = writeln!(out, "# HELP kestrel_forward_passes_total Forward passes of the model.\n# TYPE kestrel_forward_passes_total counter\nkestrel_forward_passes_total {}", m.forward_passes);
        let _ = writeln!(out, "# HELP kestrel_images_total Images predicted.\n# TYPE kestrel_images_total counter\nkestrel_images_total {}", m.images);
        out
    }
}
