//! Pretends this crate is an older release of kiln-abi.
//!
//! abi_stable records `CARGO_PKG_NAME` and `CARGO_PKG_VERSION` of the crate
//! that defines each type (and of the root module) in the exported layout.
//! A build script may override both for its own crate, which is how this test
//! plugin becomes "a plugin built against kiln-abi 0.0.9" without a second
//! package named kiln-abi (cargo refuses two in one workspace).

fn main() {
    println!("cargo:rustc-env=CARGO_PKG_NAME=kiln-abi");
    println!("cargo:rustc-env=CARGO_PKG_VERSION=0.0.9");
    println!("cargo:rerun-if-changed=build.rs");
}
