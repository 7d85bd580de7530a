//! kiln's built-in CPU backend ([`kiln_tensor::CpuBackend`]) exported through
//! the stable ABI as a loadable plugin.
//!
//! It exists to prove the plugin path end to end: a host that loads this
//! library with [`kiln_abi::loader::load_backend_plugin`] trains with the
//! same losses, bit for bit, as one that uses `kiln_tensor::cpu_backend`
//! directly (tests/it/plugins.rs). Build it with `cargo xtask plugins`.
//!
//! Options for `new_backend` (see [`options`]): `threads=N`, and
//! `panic_on=METHOD` (any entry of `kiln_abi::METHODS`) to test a host's
//! handling of a panicking plugin.
//!
//! Every exported function runs inside [`kiln_abi::guard::guard`] (or cannot
//! panic), and the backend is wrapped in [`guarded::Guarded`]: a panic
//! becomes an `RErr("panic in OP: ...")` instead of ending the host.

pub mod guarded;
pub mod options;

use kiln_abi::{
    abi_stable::{
        export_root_module, prefix_type::PrefixTypeTrait, sabi_extern_fn, sabi_trait::TD_Opaque,
    },
    guard::guard,
    BackendBox, BackendPlugin, BackendPluginRef, Backend_TO, RResult, RStr, RString,
    KILN_ABI_VERSION,
};
use kiln_tensor::CpuBackend;

use crate::guarded::Guarded;
use crate::options::PluginOptions;

/// "kiln-cpu-plugin 0.1.0": what `BackendPlugin::name` returns.
pub const PLUGIN_NAME: &str = concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION"));

/// The root module abi_stable looks up when the library is loaded.
#[export_root_module]
pub fn get_library() -> BackendPluginRef {
    BackendPlugin {
        abi_version,
        name,
        new_backend,
    }
    .leak_into_prefix()
}

// `abi_version` and `name` return constants and have no panicking path.
#[sabi_extern_fn]
fn abi_version() -> u32 {
    KILN_ABI_VERSION
}

#[sabi_extern_fn]
fn name() -> RString {
    PLUGIN_NAME.into()
}

#[sabi_extern_fn]
fn new_backend(options: RStr<'_>) -> RResult<BackendBox, RString> {
    guard("new_backend", || {
        match PluginOptions::parse(options.as_str()) {
            Ok(opts) => {
                let cpu = CpuBackend::new(opts.threads);
                RResult::ROk(Backend_TO::from_value(
                    Guarded::new(cpu, opts.panic_on),
                    TD_Opaque,
                ))
            }
            Err(msg) => RResult::RErr(format!("{PLUGIN_NAME}: {msg}").into()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_abi::{BackendExt, IntoBResult, MatmulArgs};

    fn backend(options: &str) -> BackendBox {
        new_backend(RStr::from_str(options)).into_result().unwrap()
    }

    #[test]
    fn reports_version_and_name() {
        assert_eq!(abi_version(), KILN_ABI_VERSION);
        assert!(name().as_str().starts_with("kiln-cpu-plugin "));
        let info = backend("threads=2").info().unwrap();
        assert_eq!(info.name.as_str(), "cpu");
        assert!(
            info.device.as_str().contains("2 threads"),
            "{}",
            info.device
        );
    }

    #[test]
    fn bad_options_are_errors_naming_the_plugin() {
        let e = new_backend(RStr::from_str("gpu=1"))
            .into_result()
            .err()
            .unwrap();
        assert!(e.as_str().starts_with(PLUGIN_NAME), "{e}");
        assert!(e.as_str().contains("unknown option `gpu`"), "{e}");
    }

    #[test]
    fn injected_panic_becomes_an_error_and_the_backend_keeps_working() {
        let mut be = backend("threads=1,panic_on=matmul");
        let a = be.from_f32(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        let out = be.alloc_buf(kiln_abi::DType::F32, 4).unwrap();
        let e = be
            .matmul(MatmulArgs::new(out, a, a, 2, 2, 2))
            .ok_or_err()
            .unwrap_err();
        assert!(e.0.starts_with("panic in matmul: injected fault"), "{e}");
        // Other ops are unaffected.
        be.scale(a, 4, 2.0).ok_or_err().unwrap();
        assert_eq!(be.download_f32(a).unwrap(), vec![2.0, 4.0, 6.0, 8.0]);
    }

    #[test]
    fn buffer_methods_and_info_are_guarded_too() {
        let mut be = backend("panic_on=info");
        let e = be.info().ok_or_err().unwrap_err();
        assert!(e.0.starts_with("panic in info: injected fault"), "{e}");
        let mut be = backend("panic_on=download");
        let a = be.from_f32(&[1.0]).unwrap();
        let e = be.download_f32(a).unwrap_err();
        assert!(e.0.starts_with("panic in download"), "{e}");
    }
}
