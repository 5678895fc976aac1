//! 1. Sets an rpath to libtorch's library folder, so that the `kestrel` binary, the tests
//!    and the examples run without LD_LIBRARY_PATH. torch-sys (`links = "tch"`) reports the
//!    folder it linked against as DEP_TCH_LIBTORCH_LIB.
//! 2. Compiles the c10d shim (csrc/, `kestrel::distributed`: the process groups and DDP's
//!    `c10d::Reducer`) with the `cc` crate against the
//!    same libtorch, with torch-sys's flags (C++17, `-D_GLIBCXX_USE_CXX11_ABI`, its include
//!    folders). `ProcessGroupGloo.hpp` needs gloo's headers, which the PyPI wheel does not
//!    ship: Debian's `libgloo-dev` provides them (headers only; the gloo code that runs is
//!    libtorch_cpu's, libgloo.so is never linked). The NCCL process group is compiled only
//!    when libtorch has CUDA (libtorch_cuda.so) and the CUDA runtime, CCCL and NCCL headers
//!    are found (scripts/setup.sh installs the wheel's nvidia-cuda-crt/-cccl headers);
//!    otherwise `ProcessGroup::nccl` returns an error saying so.
//! 3. Compiles the memory-lean training ops (csrc/train_ops.cpp, `kestrel::models::lean`:
//!    BatchNorm + ReLU6 and the frozen-weight convolution as libtorch autograd functions)
//!    the same way; they share the shim's error convention (csrc/shim_util.hpp).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=KESTREL_GLOO_INCLUDE");
    for f in [
        "csrc/c10d_shim.cpp",
        "csrc/c10d_reducer.cpp",
        "csrc/c10d_nccl.cpp",
        "csrc/c10d_shim.h",
        "csrc/c10d_internal.hpp",
        "csrc/shim_util.hpp",
        "csrc/train_ops.cpp",
        "csrc/train_ops.h",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys reported no libtorch folder (DEP_TCH_LIBTORCH_LIB): run scripts/setup.sh");
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let torch = Path::new(&lib).parent().expect("libtorch lib folder has a parent").to_path_buf();
    let gloo = std::env::var("KESTREL_GLOO_INCLUDE").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/usr/include"));
    if !gloo.join("gloo/config.h").is_file() {
        panic!(
            "kestrel's c10d shim needs gloo's headers ({}/gloo/config.h is missing): install Debian's libgloo-dev \
             (`apt-get install libgloo-dev`, which scripts/setup.sh does) or point KESTREL_GLOO_INCLUDE at a folder \
             holding gloo/",
            gloo.display()
        );
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let base = |b: &mut cc::Build| {
        b.cpp(true)
            .include(torch.join("include"))
            .include(torch.join("include/torch/csrc/api/include"))
            .include("csrc")
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .flag("-Wno-unused-parameter")
            .flag("-Wno-deprecated-declarations")
            .flag("-Wno-interference-size")
            .opt_level(1)
            .debug(false);
    };
    let mut b = cc::Build::new();
    base(&mut b);
    b.flag("-DUSE_C10D_GLOO").include(&gloo).file("csrc/c10d_shim.cpp").file("csrc/c10d_reducer.cpp");

    let nccl_dirs = nccl_includes(&torch, Path::new(&lib));
    match &nccl_dirs {
        Some(dirs) => {
            b.flag("-DKD_WITH_NCCL");
            let mut n = cc::Build::new();
            base(&mut n);
            n.flag("-DUSE_C10D_NCCL").includes(dirs).file("csrc/c10d_nccl.cpp");
            n.compile("kestrel_c10d_nccl");
        }
        None => println!("cargo:warning=kestrel: building the c10d shim without NCCL (no libtorch_cuda.so with CUDA runtime, CCCL and NCCL headers)"),
    }
    b.compile("kestrel_c10d");

    let mut ops = cc::Build::new();
    base(&mut ops);
    ops.file("csrc/train_ops.cpp");
    ops.compile("kestrel_train_ops");
}

/// The include folders the NCCL process group needs, when libtorch has CUDA and they all
/// exist: the wheel's nvidia/cu13 (or cu12) include folder (cuda_runtime.h, crt/, nv/target)
/// and nvidia/nccl/include (nccl.h).
fn nccl_includes(torch: &Path, lib: &Path) -> Option<Vec<PathBuf>> {
    if !lib.join("libtorch_cuda.so").is_file() {
        return None;
    }
    let nvidia = torch.parent()?.join("nvidia");
    let cuda = ["cu13", "cu12", "cuda_runtime"].iter().map(|d| nvidia.join(d).join("include"))
        .find(|d| d.join("cuda_runtime.h").is_file() && d.join("crt/host_config.h").is_file() && d.join("nv/target").is_file())?;
    let nccl = nvidia.join("nccl/include");
    nccl.join("nccl.h").is_file().then(|| vec![cuda, nccl])
}
