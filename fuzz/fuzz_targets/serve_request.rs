//! kestrel-serve's `POST /predict` request parsing: the input's first line is the
//! Content-Type, the rest the body; the body is split into images as the server splits
//! it (one image, or the parts of a multipart form), and each image is decoded and
//! presized as the server does before inference (default limits, a 64 px model).
#![no_main]
use kestrel_fuzz as _;
use kestrel_image::decode::DecodeLimits;
use kestrel_image::resize::ItemTfm;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (ctype, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let ctype = String::from_utf8_lossy(ctype);
    let rt = RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("a tokio runtime"));
    let parsed = rt.block_on(kestrel_serve::http::request_images(&ctype, bytes::Bytes::copy_from_slice(body)));
    let Ok(images) = parsed else { return };
    let tfm = ItemTfm::presize(64, "crop", "reflection").expect("a valid item transform");
    for (_, image) in images {
        let _ = kestrel_serve::model::preprocess(&image, &tfm, &DecodeLimits::default());
    }
});
