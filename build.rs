//! Sets an rpath to libtorch's library folder, so that the `kestrel` binary, the tests
//! and the examples run without LD_LIBRARY_PATH. torch-sys (`links = "tch"`) reports the
//! folder it linked against as DEP_TCH_LIBTORCH_LIB.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
