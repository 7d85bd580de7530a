//! `cargo xtask <chore>`: project automation in Rust, no shell scripts.
//!
//! - `ci`       fmt check, clippy -D warnings, tests incl. plugins (what `.ci/run` runs),
//!   with and without MPI when an Open MPI is installed
//! - `plugins`  build the cdylib plugins into `target/plugins/`
//! - `bench [NAME]` run the criterion benchmarks (all, or one bench target)
//! - `demo`     the main job: `kiln pipeline` in release mode
//! - `experiment data-quality [--quick]`  raw vs curated pretraining data,
//!   written up in docs/experiments/ (see `experiment/mod.rs`)

mod experiment;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("plugins") => plugins("release").map(|_| ()),
        Some("bench") => bench(args.get(1).map(String::as_str)),
        Some("demo") => cargo(&["run", "--release", "-p", "kiln-cli", "--", "pipeline"]),
        Some("experiment") => experiment::run(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <ci|plugins|bench [NAME]|demo|experiment data-quality [--quick]>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<(), String> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The plugin crates: every folder under `plugins/`, except the test plugins
/// (`kiln-test-*`: deliberately incompatible builds that the tests load; they
/// are dev-dependencies of the tests, so `cargo test` builds them itself).
fn plugin_crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("plugins"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("Cargo.toml").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with("kiln-test-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// cargo's target folder: `$CARGO_TARGET_DIR` (relative to the workspace
/// root when relative) or `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Builds every plugin and copies the shared libraries to `<target>/plugins/`.
fn plugins(profile: &str) -> Result<PathBuf, String> {
    let out = target_dir().join("plugins");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    for name in plugin_crates() {
        let mut args = vec!["build", "-p", name.as_str()];
        if profile == "release" {
            args.push("--release");
        }
        cargo(&args)?;
        let lib = format!(
            "{}{}{}",
            std::env::consts::DLL_PREFIX,
            name.replace('-', "_"),
            std::env::consts::DLL_SUFFIX
        );
        let built = target_dir().join(profile).join(&lib);
        if !built.exists() {
            return Err(format!(
                "`cargo build -p {name}` did not produce {}",
                built.display()
            ));
        }
        std::fs::copy(&built, out.join(&lib))
            .map_err(|e| format!("cannot copy {} to {}: {e}", built.display(), out.display()))?;
        eprintln!("plugin: {}", out.join(&lib).display());
    }
    Ok(out)
}

fn bench(name: Option<&str>) -> Result<(), String> {
    let mut args = vec!["bench", "-p", "kiln-benches"];
    if let Some(n) = name {
        args.extend(["--bench", n]);
    }
    if open_mpi_present() {
        // the data_parallel bench's MpiComm and mpirun rows
        args.extend(["--features", "mpi"]);
    }
    cargo(&args)
}

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--check"])?;
    let clippy = ["clippy", "--workspace", "--all-targets"];
    let deny = ["--", "-D", "warnings"];
    cargo(&[&clippy[..], &deny].concat())?;
    // With an Open MPI here, the MPI build is linted and tested too (the
    // multi-process tests, tests/it/mpi.rs, launch the kiln binary under
    // mpirun); without one they cannot build, so they skip, saying why.
    let features: &[&str] = if open_mpi_present() {
        &["--features", MPI_FEATURES]
    } else {
        eprintln!(
            "xtask ci: no Open MPI (mpirun + mpicc), so the MPI build and its multi-process \
             tests are skipped; apt install libopenmpi-dev openmpi-bin libclang-dev to run them"
        );
        &[]
    };
    if !features.is_empty() {
        cargo(&[&clippy[..], features, &deny].concat())?;
    }
    // No separate plugin build: the plugins are dev-dependencies of
    // kiln-tests, so `cargo test` builds them (one feature resolution, one
    // set of artifacts) and tests/it/plugins.rs loads them from there.
    cargo(&[&["test", "--workspace"][..], features].concat())
}

/// The features of the MPI build: kiln joins `mpirun`/`srun` launches, and
/// the tests launch it (tests/it/cli.rs builds the binary with the same).
const MPI_FEATURES: &str = "kiln-cli/mpi,kiln-tests/mpi";

/// Whether Open MPI's launcher and compiler wrapper both run (the `mpi`
/// crate builds against `mpicc`; the tests need Open MPI's `mpirun`).
fn open_mpi_present() -> bool {
    let runs = |tool: &str, arg: &str| {
        Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    runs("mpirun", "--version") && runs("mpicc", "--showme:version")
}
