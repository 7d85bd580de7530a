//! Backends chosen at run time: `--backend cpu|NAME|PATH` (or `$KILN_BACKEND`
//! when the option is absent; default `cpu`, the built-in backend).
//!
//! - `cpu`: kiln's built-in CPU backend (kiln-tensor).
//! - `PATH`: a plugin library, when the value contains a `/` or ends with
//!   the platform's library suffix (`.so`, `.dylib`, `.dll`). A relative path
//!   is resolved against the working directory, so the dynamic loader never
//!   searches for a bare name.
//! - `NAME`: a plugin in the plugin folders, searched in this order:
//!   `$KILN_PLUGIN_DIR`, `~/.kiln/plugins`, `target/plugins` under the working
//!   directory, and `target/plugins` of the checkout the running `kiln` was
//!   built in. `cuda` matches `libcuda.so`, `libkiln_cuda.so` or
//!   `libkiln_cuda_plugin.so` (dashes read as underscores).
//!
//! Plugins are code: kiln loads only what the user named or what lies in
//! those folders, and prints what it loaded (name, ABI version, device) to
//! stderr. `--backend-options` is passed to the plugin (e.g. `threads=2`);
//! `--threads N` becomes `threads=N` unless the options set it.
//!
//! The pipeline selects its backend once ([`select`]); the stages it runs
//! then open the same one without an option of their own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, Context};
use kiln_abi::loader::{load_backend_plugin, LoadedBackendPlugin};
use kiln_abi::BackendBox;

/// The `--backend` option every command that computes flattens into its args.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendArg {
    /// Compute backend: `cpu` (built in), the NAME of a plugin in the plugin
    /// folder ($KILN_PLUGIN_DIR, ~/.kiln/plugins, target/plugins), or the
    /// PATH of a plugin library [env: KILN_BACKEND; default: cpu]
    #[arg(long = "backend", value_name = "cpu|NAME|PATH")]
    pub backend: Option<String>,
    /// Options for a plugin backend, e.g. "threads=2" (see `kiln plugins list`)
    #[arg(long = "backend-options", value_name = "OPTIONS", default_value = "")]
    pub options: String,
}

/// What `--backend` (or `$KILN_BACKEND`) named, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    BuiltIn,
    Plugin(PathBuf),
}

/// The choice the pipeline made for every stage it runs (see [`select`]).
static SELECTED: OnceLock<BackendArg> = OnceLock::new();

/// Makes `arg` the backend of every later [`open`] whose own option is
/// absent (the pipeline's stages). The first selection stays.
pub fn select(arg: &BackendArg) {
    let _ = SELECTED.set(arg.clone());
}

/// Opens the backend `arg` names (else the selected one, else
/// `$KILN_BACKEND`, else the built-in CPU backend) and says which on stderr.
pub fn open(arg: &BackendArg, threads: Option<usize>) -> anyhow::Result<BackendBox> {
    let arg = effective(arg);
    let spec = arg
        .backend
        .clone()
        .or_else(|| {
            std::env::var("KILN_BACKEND")
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|| "cpu".into());
    match resolve(&spec)? {
        Choice::BuiltIn => {
            if !arg.options.trim().is_empty() {
                bail!(
                    "--backend-options {:?} is for plugins; the built-in cpu backend takes \
                     --threads instead",
                    arg.options
                );
            }
            let mut be = kiln_tensor::cpu_backend(threads);
            announce(
                &format!("cpu (built in, kiln ABI {})", kiln_abi::KILN_ABI_VERSION),
                &mut be,
            );
            Ok(be)
        }
        Choice::Plugin(path) => {
            let plugin = load(&path)?;
            let options = plugin_options(&arg.options, threads);
            let mut be = plugin.new_backend(&options).map_err(|e| {
                anyhow!(
                    "backend {}: the plugin refused to create a backend with options {options:?}: {e}",
                    path.display()
                )
            })?;
            announce(
                &format!(
                    "{} (kiln ABI {}) from {}",
                    plugin.name(),
                    plugin.abi_version(),
                    path.display()
                ),
                &mut be,
            );
            Ok(be)
        }
    }
}

fn effective(arg: &BackendArg) -> BackendArg {
    match (&arg.backend, SELECTED.get()) {
        (None, Some(selected)) if arg.options.is_empty() => selected.clone(),
        _ => arg.clone(),
    }
}

/// `--threads N` as the plugin option `threads=N`, unless the options set it.
fn plugin_options(options: &str, threads: Option<usize>) -> String {
    let has_threads = options
        .split(|c: char| c == ',' || c.is_whitespace())
        .any(|kv| kv.starts_with("threads="));
    match threads {
        Some(n) if !has_threads => {
            if options.trim().is_empty() {
                format!("threads={n}")
            } else {
                format!("{options},threads={n}")
            }
        }
        _ => options.to_string(),
    }
}

/// Prints what was opened, once per description (stages reopen it).
fn announce(what: &str, be: &mut BackendBox) {
    static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let device = match be.info().into_result() {
        Ok(info) => info.device.into_string(),
        Err(e) => format!("device unknown: info() failed: {e}"),
    };
    let line = format!("backend: {what}; device: {device}");
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if !said.contains(&line) {
        eprintln!("{line}");
        said.push(line);
    }
}

/// Loads a plugin once per process (abi_stable never unloads a library).
pub fn load(path: &Path) -> anyhow::Result<LoadedBackendPlugin> {
    static LOADED: Mutex<Option<HashMap<PathBuf, LoadedBackendPlugin>>> = Mutex::new(None);
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    let map = loaded.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(path) {
        return Ok(*p);
    }
    let plugin = load_backend_plugin(path).map_err(|e| {
        anyhow!(
            "backend {e}. Fix: name a plugin library built for this kiln (`cargo xtask plugins` \
             builds kiln's into target/plugins), or use --backend cpu"
        )
    })?;
    map.insert(path.to_path_buf(), plugin);
    Ok(plugin)
}

/// `cpu`, a path, or a plugin name looked up in [`plugin_dirs`].
pub fn resolve(spec: &str) -> anyhow::Result<Choice> {
    let spec = spec.trim();
    if spec.is_empty() {
        bail!("--backend is empty; use cpu, a plugin NAME or a PATH to a plugin library");
    }
    if spec == "cpu" {
        return Ok(Choice::BuiltIn);
    }
    if looks_like_path(spec) {
        let cwd = std::env::current_dir().context("cannot read the working directory")?;
        let path = cwd.join(spec);
        if !path.is_file() {
            bail!(
                "backend {}: no such plugin file (from --backend {spec}); give the path of a \
                 lib*{} plugin library, or a plugin NAME from `kiln plugins list`",
                path.display(),
                std::env::consts::DLL_SUFFIX
            );
        }
        return Ok(Choice::Plugin(path));
    }
    let dirs = plugin_dirs();
    for (dir, _) in &dirs {
        if let Some(path) = find_in(dir, spec) {
            return Ok(Choice::Plugin(path));
        }
    }
    let searched: Vec<String> = dirs
        .iter()
        .map(|(d, why)| format!("{} ({why})", d.display()))
        .collect();
    bail!(
        "backend `{spec}`: no plugin of that name in {}; build kiln's plugins with `cargo xtask \
         plugins`, put the library in $KILN_PLUGIN_DIR or ~/.kiln/plugins, give its PATH, or \
         use --backend cpu (`kiln plugins list` shows what is there)",
        if searched.is_empty() {
            "any plugin folder (none exists)".to_string()
        } else {
            searched.join(", ")
        }
    )
}

fn looks_like_path(spec: &str) -> bool {
    spec.contains('/')
        || spec.contains(std::path::MAIN_SEPARATOR)
        || spec.ends_with(std::env::consts::DLL_SUFFIX)
}

/// The library in `dir` that plugin `name` denotes, if any.
fn find_in(dir: &Path, name: &str) -> Option<PathBuf> {
    let stem = name.replace('-', "_");
    let (pre, suf) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    [
        stem.clone(),
        format!("kiln_{stem}"),
        format!("kiln_{stem}_plugin"),
    ]
    .iter()
    .map(|s| dir.join(format!("{pre}{s}{suf}")))
    .find(|p| p.is_file())
}

/// The plugin folders that exist, in search order, each with where it came
/// from. `$KILN_PLUGIN_DIR` is listed even when missing (the user named it).
pub fn plugin_dirs() -> Vec<(PathBuf, String)> {
    let mut dirs: Vec<(PathBuf, String)> = Vec::new();
    if let Some(dir) = std::env::var_os("KILN_PLUGIN_DIR").filter(|d| !d.is_empty()) {
        dirs.push((PathBuf::from(dir), "$KILN_PLUGIN_DIR".into()));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        dirs.push((
            Path::new(&home).join(".kiln").join("plugins"),
            "~/.kiln/plugins".into(),
        ));
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push((
            cwd.join("target").join("plugins"),
            "target/plugins of the working directory".into(),
        ));
    }
    // target/<profile>/kiln -> target/plugins of the checkout it was built in
    if let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
    {
        dirs.push((
            target.join("plugins"),
            "target/plugins next to this kiln".into(),
        ));
    }
    let mut seen = Vec::new();
    dirs.retain(|(d, why)| {
        let keep = (why == "$KILN_PLUGIN_DIR" || d.is_dir()) && !seen.contains(d);
        seen.push(d.clone());
        keep
    });
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_built_in_and_paths_are_resolved_against_the_working_directory() {
        assert_eq!(resolve("cpu").unwrap(), Choice::BuiltIn);
        let e = resolve("./no/such/libx.so").unwrap_err().to_string();
        let cwd = std::env::current_dir().unwrap();
        assert!(
            e.contains(&cwd.join("./no/such/libx.so").display().to_string()),
            "{e}"
        );
        assert!(e.contains("no such plugin file"), "{e}");
        let e = resolve("").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn unknown_names_list_the_folders_searched_and_the_fix() {
        let e = resolve("no-such-backend-xyz").unwrap_err().to_string();
        assert!(e.contains("no plugin of that name"), "{e}");
        assert!(
            e.contains("--backend cpu") && e.contains("kiln plugins list"),
            "{e}"
        );
    }

    #[test]
    fn names_match_library_files_in_a_folder() {
        let dir = std::env::temp_dir().join(format!("kiln-backend-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pre, suf) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
        let lib = dir.join(format!("{pre}kiln_cpu_plugin{suf}"));
        std::fs::write(&lib, "x").unwrap();
        assert_eq!(find_in(&dir, "cpu-plugin"), Some(lib.clone()));
        assert_eq!(find_in(&dir, "kiln-cpu-plugin"), Some(lib.clone()));
        assert_eq!(find_in(&dir, "cpu_plugin"), Some(lib));
        assert_eq!(find_in(&dir, "cuda"), None);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn threads_become_a_plugin_option_unless_set() {
        assert_eq!(plugin_options("", Some(2)), "threads=2");
        assert_eq!(plugin_options("device=1", Some(2)), "device=1,threads=2");
        assert_eq!(plugin_options("threads=3", Some(2)), "threads=3");
        assert_eq!(plugin_options("", None), "");
    }

    #[test]
    fn the_builtin_backend_opens_and_refuses_plugin_options() {
        let arg = BackendArg {
            backend: Some("cpu".into()),
            options: String::new(),
        };
        let mut be = open(&arg, Some(1)).unwrap();
        assert_eq!(be.info().unwrap().name.as_str(), "cpu");
        let arg = BackendArg {
            backend: Some("cpu".into()),
            options: "threads=2".into(),
        };
        let e = open(&arg, None).err().unwrap().to_string();
        assert!(e.contains("--threads"), "{e}");
    }
}
