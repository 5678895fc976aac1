//! The pickle virtual machine, through the old (non-zip) `.pth` layout it reads.
#![no_main]
use kestrel_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kestrel::models::weights::load_legacy(data);
});
