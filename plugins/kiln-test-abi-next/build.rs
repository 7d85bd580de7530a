//! Pretends this crate is the next patch release of kiln-abi (an additive
//! change: one new root-module field). abi_stable records `CARGO_PKG_NAME`
//! and `CARGO_PKG_VERSION` of the defining crate in every layout; a build
//! script may override both for its own crate.

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap();
    let mut parts: Vec<u64> = version
        .split('.')
        .map(|p| p.parse().expect("numeric version"))
        .collect();
    parts[2] += 1;
    println!("cargo:rustc-env=CARGO_PKG_NAME=kiln-abi");
    println!(
        "cargo:rustc-env=CARGO_PKG_VERSION={}.{}.{}",
        parts[0], parts[1], parts[2]
    );
    println!("cargo:rerun-if-changed=build.rs");
}
