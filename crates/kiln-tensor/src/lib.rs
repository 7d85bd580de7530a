//! Host arrays, 16-bit dtypes and the built-in multi-threaded CPU backend.
//!
//! [`CpuBackend`] implements [`kiln_abi::Backend`] (ABI generation 2):
//! buffers are 64-byte-aligned host allocations in their own dtype (f32,
//! bf16, f16, u32) and views are windows into them; ops compute in f32 on a
//! dedicated rayon pool (16-bit operands are widened, 16-bit outputs rounded
//! once); matmuls go through [`gemm`] (a fast micro-kernel
//! library, parallelised by us in shape-determined chunks). Every op is
//! bit-for-bit deterministic for any thread count; see `CpuBackend`.
//!
//! Byte order: uploads and downloads are little-endian element bytes, which
//! is the host order on every platform kiln targets (x86-64, aarch64).

#[cfg(target_endian = "big")]
compile_error!("kiln-tensor assumes a little-endian host (upload/download copy raw bytes)");

mod backend;
pub mod gemm;
pub mod gemm_bf16;
mod ops;
mod store;
mod validate;

pub use backend::CpuBackend;
pub use gemm::GemmEngine;

use kiln_abi::{abi_stable::sabi_trait::TD_Opaque, BackendBox, Backend_TO};

/// The CPU backend behind the stable ABI, as the model holds it. `threads`:
/// worker threads (`None`: one per available core).
pub fn cpu_backend(threads: Option<usize>) -> BackendBox {
    Backend_TO::from_value(CpuBackend::new(threads), TD_Opaque)
}
