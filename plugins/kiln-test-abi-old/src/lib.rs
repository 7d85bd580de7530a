//! Test plugin: today's kiln backend interface, compiled as if it were
//! kiln-abi 0.0.9 (see build.rs). Loading it must fail with
//! "incompatible ABI: ... rebuild the plugin ...", never crash.

// The interface sources of kiln-abi itself, so only the version differs.
#[path = "../../../crates/kiln-abi/src/args.rs"]
pub mod args;
#[path = "../../../crates/kiln-abi/src/backend.rs"]
pub mod backend;
#[path = "../../../crates/kiln-abi/src/dtype.rs"]
pub mod dtype;
#[path = "../../../crates/kiln-abi/src/plugin.rs"]
pub mod plugin;

use abi_stable::{
    export_root_module,
    prefix_type::PrefixTypeTrait,
    sabi_extern_fn,
    std_types::{RResult, RStr, RString},
};

use crate::backend::BackendBox;
use crate::plugin::{BackendPlugin, BackendPluginRef, KILN_ABI_VERSION};

#[export_root_module]
pub fn get_library() -> BackendPluginRef {
    BackendPlugin {
        abi_version,
        name,
        new_backend,
    }
    .leak_into_prefix()
}

#[sabi_extern_fn]
fn abi_version() -> u32 {
    KILN_ABI_VERSION
}

#[sabi_extern_fn]
fn name() -> RString {
    "kiln-test-abi-old (kiln-abi 0.0.9)".into()
}

#[sabi_extern_fn]
fn new_backend(_options: RStr<'_>) -> RResult<BackendBox, RString> {
    RResult::RErr("kiln-test-abi-old has no backend".into())
}
