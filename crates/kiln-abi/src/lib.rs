//! kiln's stable plugin ABI.
//!
//! Everything that crosses a shared-library boundary is defined here, with
//! `abi_stable` so that a plugin built separately (a CUDA backend, an expert
//! layer) can be loaded at run time and checked for layout compatibility:
//!
//! - [`DType`] and [`BufId`]: what a device buffer is.
//! - [`Backend`]: the layer-level op set (llm.c granularity) every compute
//!   backend implements; the model only ever talks to a [`BackendBox`].
//! - [`BackendPlugin`]: the root module a backend plugin exports.
//! - [`loader`]: loading plugins with short, actionable errors.
//! - [`guard`]: catching panics before they cross the FFI boundary.
//!
//! This crate depends on nothing else of kiln's.

mod backend;
mod dtype;
mod ext;
pub mod guard;
pub mod loader;
mod plugin;

pub use abi_stable;
pub use abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr, RString, RVec};
pub use backend::{
    AdamWArgs, Backend, BackendBox, BackendInfo, Backend_TO, BufInfoPair, MatmulArgs,
};
pub use dtype::{BufId, DType};
pub use ext::{BResult, BackendError, BackendExt, IntoBResult};
pub use plugin::{BackendPlugin, BackendPluginRef, KILN_ABI_VERSION};
