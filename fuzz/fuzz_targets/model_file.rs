//! The safetensors header and kestrel's model-file metadata (JSON → ModelCard), then the
//! whole model file (weights and their SHA-256), and safetensors as `--weights`.
#![no_main]
use kestrel_fuzz as _;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz.safetensors");
    if kestrel::export::model_meta_from_bytes(p, data).is_ok() {
        let _ = kestrel::export::model_file_from_bytes(p, data);
    }
    let _ = kestrel::models::weights::load_safetensors(data);
});
