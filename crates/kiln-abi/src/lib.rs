//! kiln's stable plugin ABI (generation 2; docs/adr/0004-backend-abi-2.md).
//!
//! Everything that crosses a shared-library boundary is defined here, with
//! `abi_stable` so that a plugin built separately (a CUDA backend, an expert
//! layer) can be loaded at run time and checked for layout compatibility:
//!
//! - [`DType`] and [`BufId`]: what a device buffer (or a view of one) is.
//! - [`Backend`]: the layer-level op set (llm.c granularity) every compute
//!   backend implements, defined once in [`for_each_backend_method!`]; the
//!   model only ever talks to a [`BackendBox`]. Its argument structs are in
//!   `args`, the step-statistics slots in [`stats`], the reference rounding
//!   in [`rounding`].
//! - [`BackendPlugin`]: the root module a backend plugin exports.
//! - [`loader`]: loading plugins with short, actionable errors.
//! - [`guard`]: catching panics before they cross the FFI boundary.
//! - [`BackendExt`]: typed, shaped (ndarray) host access to buffers.
//!
//! This crate depends on nothing else of kiln's.

mod args;
mod backend;
mod dtype;
mod ext;
pub mod guard;
pub mod loader;
mod plugin;
pub mod rounding;
pub mod stats;

pub use abi_stable;
pub use abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec};
pub use args::{
    AdamWArgs, AttentionArgs, AttentionBackwardArgs, AttentionShape, CollectiveArgs,
    CollectiveKind, CommId, EmbeddingArgs, EmbeddingBackwardArgs, Epilogue, HostRegion,
    KvAttentionArgs, MatmulArgs, NormArgs, NormBackwardArgs, NormKind, Reduce, RopeArgs, Rounding,
    Unary,
};
pub use backend::{
    op_names, Backend, BackendBox, BackendInfo, Backend_TO, BufInfo, OpSupport, METHODS,
};
pub use dtype::{BufId, DType};
pub use ext::{BResult, BackendError, BackendExt, IntoBResult};
pub use plugin::{BackendPlugin, BackendPluginRef, KILN_ABI_VERSION};

/// Every name a [`for_each_backend_method!`] callback's expansion refers to:
/// `use kiln_abi::method_types::*;` next to a wrapper's forwarding impl.
pub mod method_types {
    pub use crate::{
        AdamWArgs, AttentionArgs, AttentionBackwardArgs, AttentionShape, BackendInfo, BufId,
        BufInfo, CollectiveArgs, CommId, DType, EmbeddingArgs, EmbeddingBackwardArgs, HostRegion,
        KvAttentionArgs, MatmulArgs, NormArgs, NormBackwardArgs, ROption, RResult, RSlice,
        RSliceMut, RString, RVec, Reduce, RopeArgs, Rounding, Unary,
    };
}
