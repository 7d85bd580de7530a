//! Loading plugins with errors a user can act on.
//!
//! abi_stable's own messages for an incompatible library run to hundreds of
//! lines (full type layouts); [`explain`] keeps what differs, where, and the
//! fix, in one or two lines. Several plugins of one interface load side by
//! side because we use `lib_header_from_path(..).init_root_module()`
//! (`RootModule::load_from_file` caches the first library per root-module
//! type for the whole process).
//!
//! Plugins are code: loading one runs it with the user's privileges. Callers
//! load only paths the user named or kiln's plugin folder, and say what they
//! loaded. A loaded library is never unloaded (abi_stable leaks it on
//! purpose), so loading the same path again returns the same module.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModuleError};
use abi_stable::std_types::RStr;

use crate::backend::BackendBox;
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

impl std::fmt::Debug for LoadedBackendPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBackendPlugin")
            .field("name", &self.name())
            .field("abi_version", &self.abi_version())
            .finish()
    }
}

impl LoadedBackendPlugin {
    /// Plugin name and version, e.g. "kiln-cpu-plugin 0.1.0".
    pub fn name(&self) -> String {
        (self.module.name())().into_string()
    }

    /// The kiln ABI generation the plugin was built for.
    pub fn abi_version(&self) -> u32 {
        (self.module.abi_version())()
    }

    /// Creates a backend; `options` is plugin-specific (e.g. "threads=2").
    pub fn new_backend(&self, options: &str) -> Result<BackendBox, String> {
        (self.module.new_backend())(RStr::from_str(options))
            .into_result()
            .map_err(|e| e.into_string())
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
            "no such file; build the plugins with `cargo xtask plugins` \
             (they land in target/plugins/)"
                .into(),
        ));
    }
    if path.is_dir() {
        return Err(err(
            "is a folder; name the plugin's library file (lib*.so / *.dylib / *.dll)".into(),
        ));
    }
    let header = lib_header_from_path(path).map_err(|e| err(explain(&e)))?;
    let module = header
        .init_root_module::<BackendPluginRef>()
        .map_err(|e| err(explain(&e)))?;
    let found = (module.abi_version())();
    if found != KILN_ABI_VERSION {
        return Err(err(format!(
            "incompatible ABI: built for kiln ABI {found}, this kiln speaks ABI \
             {KILN_ABI_VERSION}; {FIX}"
        )));
    }
    Ok(LoadedBackendPlugin { module })
}

/// The shared-library files in `dir` (by extension: .so, .dylib or .dll,
/// whichever this platform uses), sorted by name. Other files are ignored.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let suffix = std::env::consts::DLL_SUFFIX;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    Ok(files)
}

const FIX: &str = "rebuild the plugin against this kiln's kiln-abi \
                   (`cargo xtask plugins`), or use the kiln release it was built for";

/// A short (one or two line) explanation of an abi_stable load error,
/// ending with what to do about it.
pub fn explain(e: &LibraryError) -> String {
    match e {
        LibraryError::OpenError { err, .. } => format!(
            "cannot open it as a shared library ({}); a plugin is the \
             lib*{} file a plugin crate (crate-type cdylib) builds for this platform",
            one_line(&err.to_string()),
            std::env::consts::DLL_SUFFIX
        ),
        LibraryError::GetSymbolError { .. } => {
            "not a kiln plugin: the library exports no abi_stable root module \
             (a plugin exports one with #[export_root_module])"
                .into()
        }
        LibraryError::ParseVersionError(v) => format!(
            "not a valid plugin: its interface version is unreadable ({}); {FIX}",
            one_line(&format!("{v:?}"))
        ),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "incompatible ABI: the plugin was built against kiln-abi {actual_version}, \
             this kiln needs kiln-abi {}; {FIX}",
            compatible_range(expected_version.major, expected_version.minor),
        ),
        LibraryError::AbiInstability(inner) => format!(
            "incompatible ABI: {}; {FIX}",
            summarize_layout_error(&inner.to_string())
        ),
        LibraryError::InvalidAbiHeader(header) => format!(
            "incompatible ABI: the plugin was built with another abi_stable ABI \
             (its header says {}.{}; kiln uses abi_stable 0.11); {FIX}",
            header.abi_major, header.abi_minor
        ),
        LibraryError::InvalidCAbi { .. } => format!(
            "incompatible C ABI: the plugin was built for another platform or \
             compiler configuration; {FIX}"
        ),
        LibraryError::RootModule { err, .. } => match err {
            RootModuleError::Unwound => "the plugin panicked while initialising".into(),
            RootModuleError::Returned(e) => format!(
                "the plugin failed to initialise: {}",
                one_line(&e.to_string())
            ),
        },
        LibraryError::Many(list) => {
            let parts: Vec<String> = list.iter().take(3).map(explain).collect();
            parts.join(" | ")
        }
    }
}

/// The kiln-abi versions whose plugins this host accepts, as abi_stable's
/// semver rule has it (0.y.z: same y; x.y.z with x >= 1: same x).
fn compatible_range(major: u32, minor: u32) -> String {
    if major == 0 {
        format!("0.{minor}.x")
    } else {
        format!("{major}.x")
    }
}

/// Collapses whitespace so a message fits on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Keeps the part of abi_stable's layout report that says what differs.
///
/// The report (see `AbiInstabilityError`'s Display in abi_stable 0.11) prints
/// both full layouts, then for each difference a block
/// `Error:<what>` / `Expected:` / `<value lines>` / `Found:` / `<value lines>`.
/// We keep the first two blocks as "what (expected X, found Y)".
pub fn summarize_layout_error(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut found_blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() && found_blocks.len() < 2 {
        let line = lines[i].trim();
        if let Some(what) = line.strip_prefix("Error:") {
            let what = reword(what.trim());
            let (expected, next) = value_after(&lines, i + 1, "Expected:");
            let (found, next) = value_after(&lines, next, "Found:");
            let place = match error_path(&lines[..i]) {
                Some(p) => format!(" in `{p}`"),
                None => String::new(),
            };
            let block = match (expected, found) {
                (Some(e), Some(f)) => format!("{what}{place} (expected {e}, found {f})"),
                _ => format!("{what}{place}"),
            };
            if !block.is_empty() && !found_blocks.contains(&block) {
                found_blocks.push(block);
            }
            i = next.max(i + 1);
        } else {
            i += 1;
        }
    }
    if found_blocks.is_empty() {
        let first: Vec<&str> = lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .take(2)
            .collect();
        let mut s = first.join(" ");
        s.truncate(200);
        if s.is_empty() {
            "the type layouts differ".into()
        } else {
            s
        }
    } else {
        found_blocks.join("; ")
    }
}

/// abi_stable's wording where it misleads: "too many fields" is reported
/// whichever side has more (e.g. a plugin built before a field was added).
fn reword(what: &str) -> &str {
    match what {
        "too many fields" => "different number of fields",
        "mismatched package" => "types from another package",
        other => other,
    }
}

/// Where the difference is: the named fields on the way from the root module
/// to it (e.g. `new_backend > sum_squares`), from the "N error(s)inside:"
/// stack trace that precedes an `Error:` block. Wrapper levels that mean
/// nothing to a user (`0`, `__returns`, `field_0`, `obj`, `vtable`) are dropped.
fn error_path(before: &[&str]) -> Option<String> {
    let start = before.iter().rposition(|l| {
        l.split_once(" error(s)")
            .and_then(|(n, _)| n.trim().parse::<usize>().ok())
            .is_some_and(|n| n > 0)
    })?;
    let names: Vec<&str> = before[start..]
        .iter()
        .map(|l| l.trim())
        .take_while(|l| !l.starts_with("Layout of expected type"))
        .filter_map(|l| l.strip_prefix("field_name:"))
        .filter(|n| {
            !(n.chars().all(|c| c.is_ascii_digit())
                || n.starts_with("__")
                || n.starts_with("field_")
                || matches!(*n, "obj" | "vtable"))
        })
        .collect();
    (!names.is_empty()).then(|| names.join(" > "))
}

/// If `lines[at]` is `label`, the first following value line (shortened) and
/// the index after the value lines.
fn value_after(lines: &[&str], at: usize, label: &str) -> (Option<String>, usize) {
    if lines.get(at).map(|l| l.trim()) != Some(label) {
        return (None, at);
    }
    let mut j = at + 1;
    let mut value = None;
    while j < lines.len() {
        let raw = lines[j];
        let trimmed = raw.trim();
        let indented = raw.starts_with("    ");
        if !indented && !trimmed.is_empty() {
            break;
        }
        if value.is_none() && !trimmed.is_empty() {
            let mut v = trimmed.to_string();
            if v.len() > 120 {
                v.truncate(117);
                v.push_str("...");
            }
            value = Some(format!("`{v}`"));
        }
        j += 1;
    }
    (value, j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_and_folder_are_named() {
        let e = load_backend_plugin(Path::new("/nonexistent/libnope.so")).unwrap_err();
        assert!(e.reason.contains("no such file"), "{e}");
        assert!(e.to_string().contains("/nonexistent/libnope.so"), "{e}");
        let dir = std::env::temp_dir();
        let e = load_backend_plugin(&dir).unwrap_err();
        assert!(e.reason.contains("is a folder"), "{e}");
    }

    #[test]
    fn text_file_is_not_a_shared_library() {
        let path =
            std::env::temp_dir().join(format!("kiln-abi-not-a-plugin-{}.so", std::process::id()));
        std::fs::write(&path, "just text\n").unwrap();
        let e = load_backend_plugin(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(
            e.reason.starts_with("cannot open it as a shared library"),
            "{e}"
        );
        assert_eq!(e.reason.lines().count(), 1, "{e}");
    }

    #[test]
    fn summary_keeps_what_differs() {
        // The shape of abi_stable 0.11's report, abridged.
        let report = "\nCompared <this>:\n    --- Type Layout ---\n    type:Foo\nTo <other>:\n    type:Foo\n\n\
                      1 error(s)inside:\n    <other>\n\n    field_name:0\n    type:BackendPlugin\n\n\
                      field_name:new_backend\n    field_name:__returns\n    field_name:vtable\n\
                      field_name:sum_squares\n    type:AFunctionPointer\n\n\
                      Layout of expected type:\n    field_name:ignored\n    lots\n\n\
                      Error:mismatched type\nExpected:\n    f64\nFound:\n    f32\n\n\
                      Error:incompatible type size\nExpected:\n    8\nFound:\n    4\n";
        assert_eq!(
            summarize_layout_error(report),
            "mismatched type in `new_backend > sum_squares` (expected `f64`, found `f32`); \
             incompatible type size in `new_backend > sum_squares` (expected `8`, found `4`)"
        );
        assert_eq!(summarize_layout_error(""), "the type layouts differ");
    }
}
