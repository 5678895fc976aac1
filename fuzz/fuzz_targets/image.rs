//! Image decoding as kestrel calls it (format sniffing, the JPEG completeness check, the
//! size limits, EXIF orientation, conversion to RGB), with the default limits.
#![no_main]
use kestrel_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kestrel::data::decode::decode_bytes(data);
});
