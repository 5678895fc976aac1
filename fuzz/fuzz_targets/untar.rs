//! untar_data's extraction of a gzipped tar (paths, links, sizes), into a scratch folder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = kestrel_fuzz::scratch();
    let archive = dir.join("in.tgz");
    std::fs::write(&archive, data).expect("scratch file");
    let dest = dir.join("out");
    let _ = kestrel::util::untar::extract_tgz_limited(&archive, &dest, 64 << 20);
    let _ = std::fs::remove_dir_all(&dest);
});
