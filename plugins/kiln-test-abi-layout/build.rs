//! Makes this crate "kiln-abi, same version, one method changed": the
//! mistake of editing the interface without bumping its version.
//!
//! It claims the package name kiln-abi (abi_stable compares package names and
//! versions of every type) and generates a copy of kiln-abi's backend.rs in
//! which `Backend::step_control` takes `max_norm: f64` instead of `f32`.

use std::path::PathBuf;

const ORIGINAL: &str = "fn step_control(&mut self, stats: BufId, max_norm: f32, inv_loss_scale: f32) -> RResult<(), RString>;";
const CHANGED: &str = "fn step_control(&mut self, stats: BufId, max_norm: f64, inv_loss_scale: f32) -> RResult<(), RString>;";

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
