//! `kiln plugins list|check|test`: what backend plugins provide, why one is
//! refused, and whether one passes the conformance suite.
//!
//! Plugins are code that runs with the user's privileges, so kiln loads them
//! only from the folder the user chose (`--dir`, `$KILN_PLUGIN_DIR`) or
//! kiln's own (`~/.kiln/plugins`, then `target/plugins` of a checkout: the
//! folders `--backend NAME` searches, see `crate::backend`), and prints every
//! path before loading it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use kiln_abi::abi_stable::std_types::ROption;
use kiln_abi::loader::{load_backend_plugin, plugin_files, LoadedBackendPlugin};
use kiln_abi::{BackendBox, BackendExt, DType, IntoBResult, MatmulArgs};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List the plugins in the plugin folder: name, ABI version and backend,
    /// or why each one is refused.
    List {
        /// Plugin folder [default: every folder --backend NAME searches:
        /// $KILN_PLUGIN_DIR, ~/.kiln/plugins, target/plugins]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Options passed to each plugin's backend (e.g. "threads=2").
        #[arg(long, default_value = "")]
        options: String,
    },
    /// Load one plugin, create a backend and run a small smoke test against a
    /// CPU reference (exit code 2 with the reason when refused).
    Check {
        /// The plugin's shared library (lib*.so / *.dylib / *.dll).
        path: PathBuf,
        /// Options passed to the plugin's backend (e.g. "threads=2").
        #[arg(long, default_value = "")]
        options: String,
    },
    /// Run the backend conformance suite (every op against an f64
    /// reference, finite differences, error contracts, views, each claimed
    /// dtype, determinism) against a plugin and print the report: exit code
    /// 0 when every check passes, 2 otherwise. Check yours before shipping it.
    Test {
        /// The plugin: a PATH to its library, a NAME in the plugin folder,
        /// or `cpu` for the built-in backend.
        plugin: String,
        /// Options passed to the plugin's backend (e.g. "threads=2").
        #[arg(long, default_value = "")]
        options: String,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        Command::List { dir, options } => match dir {
            Some(dir) => list(&dir, "--dir", &options, &mut out),
            None => {
                let dirs = crate::backend::plugin_dirs();
                if dirs.is_empty() {
                    bail!(
                        "no plugin folder exists: build kiln's plugins with `cargo xtask \
                         plugins` (target/plugins), or name a folder with --dir or \
                         $KILN_PLUGIN_DIR"
                    );
                }
                for (dir, source) in dirs {
                    list(&dir, &source, &options, &mut out)?;
                }
                Ok(())
            }
        },
        Command::Check { path, options } => check(&path, &options, &mut out),
        Command::Test { plugin, options } => test(&plugin, &options, &mut out),
    }
}

/// Runs the conformance suite on the plugin `spec` names (exit 2 on a failure).
fn test(spec: &str, options: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let factory: Box<dyn Fn() -> BackendBox> = match crate::backend::resolve(spec)? {
        crate::backend::Choice::BuiltIn => {
            writeln!(out, "backend: cpu (built in)")?;
            Box::new(|| kiln_tensor::cpu_backend(None))
        }
        crate::backend::Choice::Plugin(path) => {
            let plugin = load(&path, out)?;
            writeln!(
                out,
                "plugin:  {} (kiln ABI {})",
                plugin.name(),
                plugin.abi_version()
            )?;
            let mut first = plugin
                .new_backend(options)
                .map_err(|e| anyhow!("plugin {}: cannot create a backend: {e}", path.display()))?;
            writeln!(out, "backend: {}", describe_backend(&mut first))?;
            let options = options.to_string();
            Box::new(move || {
                plugin
                    .new_backend(&options)
                    .unwrap_or_else(|e| panic!("cannot create another backend: {e}"))
            })
        }
    };
    out.flush()?;
    let report = kiln_conformance::run(factory);
    writeln!(out, "{report}")?;
    if report.all_passed() {
        Ok(())
    } else {
        bail!(
            "{} of {} conformance checks failed (ops: {})",
            report.failures().len(),
            report.checks.len(),
            report.failing_ops().join(", ")
        )
    }
}

/// Loads `path`, saying so first (plugins are code). A relative path is
/// resolved against the working directory and loaded by its absolute
/// name: dlopen given a bare `libfoo.so` would search the system library
/// path and could load some other library than the one printed.
fn load(path: &Path, out: &mut impl Write) -> anyhow::Result<LoadedBackendPlugin> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("plugin {}: cannot resolve the path", path.display()))?;
    let resolved = absolute.canonicalize().map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ => e.to_string(),
        };
        anyhow!(
            "plugin {}: {why} (looked for {}, relative paths start at the working directory)",
            path.display(),
            absolute.display()
        )
    })?;
    writeln!(out, "loading code from {}", resolved.display())?;
    Ok(load_backend_plugin(&resolved)?)
}

fn describe_backend(be: &mut BackendBox) -> String {
    let info = match be.info().into_result() {
        Ok(info) => info,
        Err(e) => return format!("info() failed: {e}"),
    };
    let dtypes: Vec<&str> = info.dtypes.iter().map(|d| d.name()).collect();
    format!(
        "{} on {}; dtypes {}",
        info.name,
        info.device,
        dtypes.join(", ")
    )
}

fn list(dir: &Path, source: &str, options: &str, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(out, "plugin folder: {} ({source})", dir.display())?;
    if !dir.is_dir() {
        bail!(
            "plugin folder {} does not exist; build kiln's plugins with \
             `cargo xtask plugins` (target/plugins), or name a folder with --dir \
             or $KILN_PLUGIN_DIR",
            dir.display()
        );
    }
    let files = plugin_files(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let (mut usable, mut refused) = (0, 0);
    for path in &files {
        match load(path, out) {
            Ok(plugin) => {
                writeln!(
                    out,
                    "  ok       {} (kiln ABI {})",
                    plugin.name(),
                    plugin.abi_version()
                )?;
                match plugin.new_backend(options) {
                    Ok(mut be) => {
                        writeln!(out, "           backend: {}", describe_backend(&mut be))?;
                        usable += 1;
                    }
                    Err(e) => {
                        writeln!(out, "  refused  cannot create a backend: {e}")?;
                        refused += 1;
                    }
                }
            }
            Err(e) => {
                let reason = e
                    .downcast_ref::<kiln_abi::loader::PluginError>()
                    .map(|p| p.reason.clone())
                    .unwrap_or_else(|| e.to_string());
                writeln!(out, "  refused  {reason}")?;
                refused += 1;
            }
        }
    }
    writeln!(
        out,
        "{} plugin file(s): {usable} usable, {refused} refused",
        files.len()
    )?;
    Ok(())
}

fn check(path: &Path, options: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let plugin = load(path, out)?;
    writeln!(
        out,
        "plugin:  {} (kiln ABI {})",
        plugin.name(),
        plugin.abi_version()
    )?;
    let mut be = plugin
        .new_backend(options)
        .map_err(|e| anyhow!("plugin {}: cannot create a backend: {e}", path.display()))?;
    writeln!(out, "backend: {}", describe_backend(&mut be))?;
    let report = smoke_test(&mut be)
        .map_err(|e| anyhow!("plugin {}: smoke test failed: {e}", path.display()))?;
    writeln!(out, "smoke test: {report}")?;
    writeln!(out, "ok")?;
    Ok(())
}

/// A tiny matmul (transposed weight, bias: the layer shape the model uses)
/// on the backend, compared with a plain-loop reference on the host.
fn smoke_test(be: &mut BackendBox) -> anyhow::Result<String> {
    let (m, n, k) = (3, 5, 4);
    let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // [n, k]
    let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 1.0).collect();
    let mut want = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f32 = (0..k).map(|p| a[i * k + p] * w[j * k + p]).sum();
            want[i * n + j] = dot + bias[j];
        }
    }
    let ba = be.from_f32(&a)?;
    let bw = be.from_f32(&w)?;
    let bb = be.from_f32(&bias)?;
    let bo = be.alloc_buf(DType::F32, m * n)?;
    if be.download_f32(ba)? != a {
        bail!("upload/download round trip changed the data");
    }
    be.matmul(MatmulArgs {
        bias: ROption::RSome(bb),
        trans_b: true,
        ..MatmulArgs::new(bo, ba, bw, m, n, k)
    })
    .ok_or_err()?;
    be.synchronize().ok_or_err()?;
    let got = be.download_f32(bo)?;
    for id in [ba, bw, bb, bo] {
        be.free(id).ok_or_err()?;
    }
    let max_diff = got
        .iter()
        .zip(&want)
        // A NaN result counts as an infinite difference (f32::max skips NaN).
        .map(|(g, w)| (g - w).abs())
        .map(|d| if d.is_nan() { f32::INFINITY } else { d })
        .fold(0f32, f32::max);
    // f32 with a different summation order (a GPU) stays far below this.
    if max_diff > 1e-4 {
        bail!("matmul {m}x{k} @ ({n}x{k})^T + bias: got {got:?}, want {want:?}");
    }
    Ok(format!(
        "upload/download ok; matmul {m}x{k} @ ({n}x{k})^T + bias matches the \
         CPU reference (max |diff| {max_diff:e})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_test_passes_on_the_builtin_backend() {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let report = smoke_test(&mut be).unwrap();
        assert!(report.contains("matches the CPU reference"), "{report}");
    }

    #[test]
    fn list_reports_refused_files_and_counts() {
        let dir = tempfile_dir();
        let fake = dir.join(format!(
            "{}fake{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ));
        std::fs::write(&fake, "not a library").unwrap();
        std::fs::write(dir.join("README.txt"), "ignored: not a library name").unwrap();
        let mut out = Vec::new();
        list(&dir, "--dir", "", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert!(text.contains("loading code from"), "{text}");
        assert!(
            text.contains("refused  cannot open it as a shared library"),
            "{text}"
        );
        assert!(
            text.contains("1 plugin file(s): 0 usable, 1 refused"),
            "{text}"
        );
        assert!(!text.contains("README"), "{text}");
    }

    #[test]
    fn missing_folder_and_refused_check_are_errors() {
        let missing = std::env::temp_dir().join("kiln-no-such-plugin-folder");
        let err = list(&missing, "--dir", "", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("cargo xtask plugins"), "{err}");
        let err = check(&missing.join("libx.so"), "", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        let err = test(
            &missing.join("libx.so").display().to_string(),
            "",
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no such plugin file"), "{err}");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kiln-plugins-list-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
