//! Image decoding as kestrel calls it (format sniffing, the JPEG completeness check, the
//! size limits, EXIF orientation, conversion to RGB), with the default limits.
//! `KESTREL_FUZZ_NO_IMAGE_LIMITS=1` turns the limits off, as the code was before they
//! existed: the harness then finds the decompression bombs (an allocation above 1 GiB).
#![no_main]
use kestrel_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        if std::env::var_os("KESTREL_FUZZ_NO_IMAGE_LIMITS").is_some() {
            kestrel::data::decode::set_limits(kestrel::data::decode::ImageLimits { max_pixels: 0, max_ratio: 0 });
        }
    },
    |data: &[u8]| {
        let _ = kestrel::data::decode::decode_bytes(data);
    }
);
