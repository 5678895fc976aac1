//! The foundation: libtorch is found and loads without LD_LIBRARY_PATH (rpath set by
//! build.rs), and the helpers every module uses behave.

use kestrel::util::{atomic::write_atomic, device::parse_device, rng};
use rand::Rng as _;
use tch::{Device, Kind, Tensor};

#[test]
fn libtorch_loads_and_computes() {
    // `cargo test` puts libtorch on LD_LIBRARY_PATH; run this test once more in a child
    // process without it, which only works when the rpath that build.rs sets is there.
    if std::env::var_os("KESTREL_RPATH_CHILD").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["libtorch_loads_and_computes", "--exact", "--nocapture"])
            .env_remove("LD_LIBRARY_PATH")
            .env("KESTREL_RPATH_CHILD", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "without LD_LIBRARY_PATH: {}", String::from_utf8_lossy(&out.stderr));
    }
    let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_kind(Kind::Float);
    assert_eq!((&t * 2.0).sum(Kind::Float).double_value(&[]), 12.0);
}

#[test]
fn devices_parse() {
    assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
    let err = parse_device("tpu").unwrap_err().to_string();
    assert!(err.contains("tpu"), "{err}");
    if !tch::Cuda::is_available() {
        let err = parse_device("cuda").unwrap_err().to_string();
        assert!(err.contains("no CUDA GPU"), "{err}");
    }
}

#[test]
fn seeded_rng_is_platform_stable() {
    // ChaCha8 with seed 42: the same first draws everywhere.
    let a: Vec<u32> = (0..4).map(|_| rng::seeded(42).random()).collect();
    let mut r = rng::seeded(42);
    let b: Vec<u32> = (0..4).map(|_| r.random()).collect();
    assert_eq!(a[0], b[0]);
    let mut e0 = rng::derived(42, 0);
    let mut e1 = rng::derived(42, 1);
    assert_ne!(e0.random::<u64>(), e1.random::<u64>());
}

#[test]
fn atomic_write_replaces_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/model.bin");
    write_atomic(&p, b"first").unwrap();
    write_atomic(&p, b"second").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    // The mode of any new file (0666 minus the umask), not a temporary file's 0600: a
    // service running as another user must be able to read an exported model.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), mode(&plain));
    }
}
