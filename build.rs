//! Lets `cargo run` and `cargo test` find ONNX Runtime's shared library without
//! LD_LIBRARY_PATH: the binary gets an rpath to the folder `scripts/setup` fills.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=ORT_LIB_LOCATION");
    let dir = std::env::var("ORT_LIB_LOCATION")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("third_party/onnxruntime/lib")
        });
    if !dir.join("libonnxruntime.so").exists() {
        println!(
            "cargo:warning=ONNX Runtime not found in {}; run scripts/setup first",
            dir.display()
        );
    }
    // The absolute path for in-tree runs, plus $ORIGIN-relative ones for an installed copy
    // that keeps the library beside the binary or in ../lib.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
    // src/zeroed_memalign.rs: the binary's memalign must come before glibc's for the shared
    // libraries (x264), so it goes into the dynamic symbol table.
    println!("cargo:rustc-link-arg-bin=ctxd=-Wl,--export-dynamic-symbol=memalign");
}
