//! The zip `.pth` reader (archive, data.pkl through the pickle VM, storages, views).
#![no_main]
use kestrel_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kestrel::models::weights::load_zip(data);
});
