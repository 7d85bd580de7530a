//! Loading plugins with errors a user can act on.
//!
//! abi_stable's own messages for an incompatible library run to hundreds of
//! lines; we keep the first lines that say what differs and add the fix.
//! Several plugins of one interface load side by side because we use
//! `lib_header_from_path(..).init_root_module()` (`load_from_file` caches the
//! first library per root-module type for the whole process).

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};

use crate::plugin::{BackendPluginRef, KILN_ABI_VERSION};

/// Why a plugin was refused.
#[derive(Debug)]
pub struct PluginError {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin {}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for PluginError {}

/// A loaded backend plugin (the library stays loaded for the process).
#[derive(Clone, Copy)]
pub struct LoadedBackendPlugin {
    pub module: BackendPluginRef,
}

impl LoadedBackendPlugin {
    pub fn name(&self) -> String {
        (self.module.name())().into_string()
    }
    pub fn abi_version(&self) -> u32 {
        (self.module.abi_version())()
    }
}

/// Loads the backend plugin at `path`, checking abi_stable's layout and
/// version rules and kiln's ABI generation.
pub fn load_backend_plugin(path: &Path) -> Result<LoadedBackendPlugin, PluginError> {
    let err = |reason: String| PluginError {
        path: path.to_path_buf(),
        reason,
    };
    if !path.exists() {
        return Err(err(
            "no such file; build plugins with `cargo xtask plugins`".into(),
        ));
    }
    let header = lib_header_from_path(path).map_err(|e| err(explain(&e)))?;
    let module = header
        .init_root_module::<BackendPluginRef>()
        .map_err(|e| err(explain(&e)))?;
    let found = (module.abi_version())();
    if found != KILN_ABI_VERSION {
        return Err(err(format!(
            "built for kiln ABI {found}, this kiln speaks ABI {KILN_ABI_VERSION}; \
             rebuild the plugin against this kiln-abi"
        )));
    }
    Ok(LoadedBackendPlugin { module })
}

const FIX: &str = "rebuild the plugin against the kiln-abi crate of this kiln \
                   (cargo xtask plugins), or use a kiln release that matches it";

/// A short explanation of an abi_stable load error.
pub fn explain(e: &LibraryError) -> String {
    match e {
        LibraryError::OpenError { err, .. } => format!("cannot open the library: {err}"),
        LibraryError::GetSymbolError { .. } => {
            "not a kiln plugin: it exports no abi_stable root module \
             (plugins use #[export_root_module])"
                .into()
        }
        LibraryError::IncompatibleVersionNumber {
            library_name,
            expected_version,
            actual_version,
        } => format!(
            "incompatible ABI: it was built with {library_name} {actual_version}, \
             this kiln needs {expected_version}; {FIX}"
        ),
        LibraryError::AbiInstability(inner) => {
            let text = inner.to_string();
            format!("incompatible ABI: {}; {FIX}", summarize_layout_error(&text))
        }
        other => {
            let text = other.to_string();
            format!("{}; {FIX}", summarize_layout_error(&text))
        }
    }
}

/// Keeps the lines of a long abi_stable layout report that say what differs.
fn summarize_layout_error(text: &str) -> String {
    let key: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Error:") || l.contains("Expected") || l.contains("Found"))
        .take(4)
        .collect();
    if key.is_empty() {
        text.lines().take(3).collect::<Vec<_>>().join(" ")
    } else {
        key.join(" ")
    }
}
