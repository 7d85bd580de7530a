//! The root module a backend plugin exports (an abi_stable prefix type).

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RResult, RStr, RString},
    StableAbi,
};

use crate::backend::BackendBox;

/// kiln's own ABI generation, shown by `kiln plugins list`. abi_stable also
/// checks the kiln-abi crate version and every type layout at load time;
/// this number is what users read in messages.
pub const KILN_ABI_VERSION: u32 = 2;

/// Exported by a backend plugin with `#[export_root_module]`.
///
/// Fields after the `last_prefix_field` may be added in later ABI versions;
/// a host reads them as `Option`s.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BackendPluginRef)))]
#[sabi(missing_field(panic))]
pub struct BackendPlugin {
    /// The [`KILN_ABI_VERSION`] the plugin was built with.
    pub abi_version: extern "C" fn() -> u32,
    /// Plugin name and version, e.g. "kiln-cpu-plugin 0.1.0".
    pub name: extern "C" fn() -> RString,
    /// Creates a backend. `options` is a plugin-specific string (may be empty),
    /// for example "threads=4" or "device=1".
    #[sabi(last_prefix_field)]
    pub new_backend: extern "C" fn(options: RStr<'_>) -> RResult<BackendBox, RString>,
}

impl RootModule for BackendPluginRef {
    declare_root_module_statics! {BackendPluginRef}
    const BASE_NAME: &'static str = "kiln_backend";
    const NAME: &'static str = "kiln backend plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
