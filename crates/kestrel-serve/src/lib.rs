//! # kestrel-serve
//!
//! Runs a kestrel model exported to ONNX (`kestrel export MODEL --format onnx`) with
//! onnxruntime, without libtorch: [`model`] loads the runtime and the model and runs
//! batches; [`predict`] is the `kestrel-serve predict` command (the JSON lines of
//! `kestrel predict --json`). Preprocessing outside the graph (decoding with the EXIF
//! orientation, the presize resize) is kestrel's own, from the shared `kestrel-image`
//! crate.

pub mod http;
pub mod metrics;
pub mod model;
pub mod predict;
