//! Test plugin: kiln's backend interface with one method changed but the
//! same kiln-abi version (see build.rs). Loading it must fail with
//! "incompatible ABI: ..." naming what differs, never crash.

/// kiln-abi's backend.rs with `step_control` taking max_norm as f64 (generated).
#[allow(non_local_definitions, clippy::all)]
pub mod backend {
    include!(concat!(env!("OUT_DIR"), "/backend.rs"));
}
#[path = "../../../crates/kiln-abi/src/args.rs"]
pub mod args;
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
    "kiln-test-abi-layout (step_control max_norm -> f64)".into()
}

#[sabi_extern_fn]
fn new_backend(_options: RStr<'_>) -> RResult<BackendBox, RString> {
    RResult::RErr("kiln-test-abi-layout has no backend".into())
}
