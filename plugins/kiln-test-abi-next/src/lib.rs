//! Test plugin: kiln-abi as its next patch release would be, with one field
//! added to the root module after the `last_prefix_field` (see build.rs).
//!
//! - As a cdylib it is "a newer plugin" for today's host: it must load, and
//!   the fields the host knows must work.
//! - As an rlib, [`BackendPluginRef`] is "a newer host": loading today's
//!   kiln-cpu-plugin with it shows what abi_stable does with an older plugin.

#[path = "../../../crates/kiln-abi/src/args.rs"]
pub mod args;
#[path = "../../../crates/kiln-abi/src/backend.rs"]
pub mod backend;
#[path = "../../../crates/kiln-abi/src/dtype.rs"]
pub mod dtype;

use abi_stable::{
    declare_root_module_statics, export_root_module,
    library::RootModule,
    package_version_strings,
    prefix_type::PrefixTypeTrait,
    sabi_extern_fn,
    sabi_types::VersionStrings,
    std_types::{RResult, RStr, RString},
    StableAbi,
};

use crate::backend::BackendBox;

/// kiln-abi's `BackendPlugin` plus `describe`, a field added later.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BackendPluginRef)))]
#[sabi(missing_field(panic))]
pub struct BackendPlugin {
    pub abi_version: extern "C" fn() -> u32,
    pub name: extern "C" fn() -> RString,
    #[sabi(last_prefix_field)]
    pub new_backend: extern "C" fn(options: RStr<'_>) -> RResult<BackendBox, RString>,
    /// New in the "next" ABI: optional for hosts (absent in older plugins).
    #[sabi(missing_field(option))]
    pub describe: extern "C" fn() -> RString,
}

impl RootModule for BackendPluginRef {
    declare_root_module_statics! {BackendPluginRef}
    const BASE_NAME: &'static str = "kiln_backend";
    const NAME: &'static str = "kiln backend plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The text `describe` returns.
pub const DESCRIPTION: &str = "kiln-test-abi-next: a root module with one more field";

#[export_root_module]
pub fn get_library() -> BackendPluginRef {
    BackendPlugin {
        abi_version,
        name,
        new_backend,
        describe,
    }
    .leak_into_prefix()
}

#[sabi_extern_fn]
fn abi_version() -> u32 {
    // The generation it shares with today's host (kiln-abi 0.2).
    2
}

#[sabi_extern_fn]
fn name() -> RString {
    concat!("kiln-test-abi-next ", env!("CARGO_PKG_VERSION")).into()
}

#[sabi_extern_fn]
fn new_backend(options: RStr<'_>) -> RResult<BackendBox, RString> {
    RResult::RErr(
        format!(
            "kiln-test-abi-next has no backend (options {:?})",
            options.as_str()
        )
        .into(),
    )
}

#[sabi_extern_fn]
fn describe() -> RString {
    DESCRIPTION.into()
}
