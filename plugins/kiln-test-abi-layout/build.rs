//! Makes this crate "kiln-abi, same version, one method changed": the
//! mistake of editing the interface without bumping its version.
//!
//! It claims the package name kiln-abi (abi_stable compares package names and
//! versions of every type) and generates a copy of kiln-abi's backend.rs in
//! which `Backend::sum_squares` returns `f32` instead of `f64`.

use std::path::PathBuf;

const ORIGINAL: &str = "fn sum_squares(&mut self, buf: BufId, n: usize) -> RResult<f64, RString>;";
const CHANGED: &str = "fn sum_squares(&mut self, buf: BufId, n: usize) -> RResult<f32, RString>;";

fn main() {
    println!("cargo:rustc-env=CARGO_PKG_NAME=kiln-abi");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let source = manifest.join("../../crates/kiln-abi/src/backend.rs");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed=build.rs");
    let text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    assert!(
        text.contains(ORIGINAL),
        "{} no longer declares `{ORIGINAL}`: update ORIGINAL/CHANGED in this build.rs \
         to another method of the Backend trait",
        source.display()
    );
    // `include!` takes items only: drop the module's inner attributes and docs.
    let body: String = text
        .replace(ORIGINAL, CHANGED)
        .lines()
        .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("backend.rs");
    std::fs::write(&out, body).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
