#![allow(non_local_definitions)] // emitted by #[sabi_trait] on recent rustc; harmless
#![allow(clippy::too_many_arguments)] // ops take explicit dimensions by design
//! The Backend interface (ABI generation 2): buffers and views plus a fixed,
//! layer-level op set, defined once in [`for_each_backend_method!`].
//!
//! Conventions every implementation follows (the CPU backend is the reference;
//! the conformance suite in `crates/kiln-conformance` checks them):
//! - Row-major layouts. `B` batch, `T` sequence, `C` channels, `NH` heads,
//!   `V` real vocabulary, `Vp` padded vocabulary (columns `V..Vp` are padding).
//! - Linear weights are `[out_features, in_features]` (PyTorch `nn.Linear`).
//! - Forward ops overwrite their outputs. **Backward ops accumulate (`+=`)
//!   into every gradient they write**, so gradients from several branches or
//!   micro-batches add up; callers zero gradients when a step starts. The
//!   documented exceptions: `crossentropy_backward` overwrites (and may run in
//!   place on the logits), `rope` works in place.
//! - Dimensions are explicit; a buffer may be larger than an op needs (an
//!   arena sized for the largest batch), never smaller: that is an error.
//! - An output may not overlap any other operand (views of one buffer that do
//!   not overlap are fine), except where an op says "in place".
//! - Every op returns `RErr(message)` on bad arguments instead of panicking,
//!   and the message names the op, the argument and the fix.
//! - Float data operands (activations, weights, gradients) may be f32, bf16 or
//!   f16 where [`BackendInfo::ops`] lists that dtype for the op; arithmetic
//!   is f32 and a 16-bit output is rounded once (nearest even). Statistics
//!   (norm `mean`/`rstd`, log-sum-exps, losses, step stats), routers'
//!   scores and the optimizer's master weights and moments are always f32.
//!
//! Adding an op: add it to [`for_each_backend_method!`] (before the last,
//! which carries `#[sabi(last_prefix_field)]` only while the generation is
//! open: see docs/adr/0004-backend-abi-2.md), implement it in the CPU backend,
//! and give it conformance checks. Wrappers (the plugin's `Guarded`, test
//! backends that count calls) forward every method through the same list.

use abi_stable::{
    sabi_trait,
    std_types::{RBox, ROption, RResult, RSlice, RSliceMut, RString, RVec},
    StableAbi,
};

use crate::args::{
    AdamWArgs, AttentionArgs, AttentionBackwardArgs, AttentionShape, CollectiveArgs, CommId,
    EmbeddingArgs, EmbeddingBackwardArgs, HostRegion, KvAttentionArgs, MatmulArgs, NormArgs,
    NormBackwardArgs, Reduce, RopeArgs, Rounding, Unary,
};
use crate::dtype::{BufId, DType};

/// A backend behind the stable ABI, as the model holds it.
pub type BackendBox = Backend_TO<'static, RBox<()>>;

/// An op and the dtypes its float data operands may have on this backend.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct OpSupport {
    pub name: RString,
    pub dtypes: RVec<DType>,
}

/// What a backend is and can do, for `kiln plugins list`, logs, and the
/// host's checks before it builds a model (a model or precision the backend
/// cannot run is refused up front, never mid-step).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct BackendInfo {
    /// Short name, e.g. "cpu" or "cuda".
    pub name: RString,
    /// The device in words, e.g. "CPU, 2 threads" or "NVIDIA H100".
    pub device: RString,
    /// Element types its buffers support.
    pub dtypes: RVec<DType>,
    /// Every op it implements, with the float dtypes each accepts. An op not
    /// listed answers `RErr("... not supported ...")`.
    pub ops: RVec<OpSupport>,
    /// `host_region` returns host memory (zero-copy host communicators).
    pub host_mapped: bool,
    /// `comm_init` / `collective` work (device communicators, e.g. NCCL).
    pub collectives: bool,
}

impl BackendInfo {
    /// Whether `op` is implemented with float operands of `dtype`.
    pub fn supports(&self, op: &str, dtype: DType) -> bool {
        self.ops
            .iter()
            .any(|s| s.name.as_str() == op && s.dtypes.contains(&dtype))
    }

    /// `Err` naming the backend, the op and the dtype when unsupported.
    pub fn require(&self, op: &str, dtype: DType) -> Result<(), String> {
        if self.supports(op, dtype) {
            Ok(())
        } else if self.ops.iter().any(|s| s.name.as_str() == op) {
            Err(format!(
                "backend `{}` ({}) cannot run `{op}` in {dtype}; choose another --precision or backend",
                self.name, self.device
            ))
        } else {
            Err(format!(
                "backend `{}` ({}) does not implement `{op}`; choose another backend",
                self.name, self.device
            ))
        }
    }
}

/// `(dtype, len)` of a buffer or view, and where a view sits in its parent.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufInfo {
    pub dtype: DType,
    pub len: usize,
    /// The buffer a view was made from (`RNone` for an allocation).
    pub parent: ROption<BufId>,
    /// Element offset of a view in its parent (0 for an allocation).
    pub offset: usize,
}

/// The single definition of every `Backend` method, as an "x-macro": it
/// calls `$callback! { ... }` with the list of method signatures (doc
/// comments included). kiln-abi declares the trait from it; a wrapper
/// forwards every method with its own callback, so an op is added in one
/// place. Every method takes `&mut self` and returns `RResult<_, RString>`.
#[macro_export]
macro_rules! for_each_backend_method {
    ($callback:ident) => {
        $callback! {
            /// Name, device, dtypes and supported ops.
            fn info(&mut self) -> RResult<BackendInfo, RString>;

            // ---- buffers and views ----------------------------------------

            /// A new buffer of `len` elements, zero-filled.
            fn alloc(&mut self, dtype: DType, len: usize) -> RResult<BufId, RString>;
            /// Frees a buffer or a view. Freeing a buffer releases its memory at
            /// once; its views stay allocated ids but every later use of them is
            /// an error naming the freed parent (a view never keeps memory alive
            /// and never dangles).
            fn free(&mut self, buf: BufId) -> RResult<(), RString>;
            /// A view of `len` elements of `parent` from element `offset`: usable
            /// wherever a buffer is (ops read and write through it, upload and
            /// download move exactly its elements). A view of a view is a view of
            /// the same memory. Views are cheap (no allocation); free them when done.
            fn view(&mut self, parent: BufId, offset: usize, len: usize) -> RResult<BufId, RString>;
            /// Element type, length and (for a view) its parent and offset.
            fn buffer_info(&mut self, buf: BufId) -> RResult<BufInfo, RString>;
            /// Copies little-endian element bytes in; `bytes.len()` must equal
            /// `len * dtype.size()`.
            fn upload(&mut self, buf: BufId, bytes: RSlice<'_, u8>) -> RResult<(), RString>;
            /// Copies the whole buffer (or view) out as little-endian element bytes,
            /// after all queued work on it. This is a host read.
            fn download(&mut self, buf: BufId, out: RSliceMut<'_, u8>) -> RResult<(), RString>;
            /// Waits for queued work (a no-op on synchronous backends). A host sync.
            fn synchronize(&mut self) -> RResult<(), RString>;
            /// The host memory behind `buf` where the backend's buffers are host
            /// memory (`BackendInfo::host_mapped`), after all queued work on it;
            /// `RNone` elsewhere (a communicator then stages through download and
            /// upload). Valid until `buf` is freed or an op writes it.
            fn host_region(&mut self, buf: BufId) -> RResult<ROption<HostRegion>, RString>;

            // ---- elementwise ------------------------------------------------

            /// Sets every element of the buffer or view to zero.
            fn zero(&mut self, buf: BufId) -> RResult<(), RString>;
            /// `dst[..n] = src[..n]`, same dtype.
            fn copy(&mut self, dst: BufId, src: BufId, n: usize) -> RResult<(), RString>;
            /// `dst[..n] = src[..n]` converted between float dtypes; narrowing
            /// uses `rounding` (stochastic: deterministic in `seed` and the
            /// element index, see `kiln_abi::rounding`).
            fn cast(&mut self, dst: BufId, src: BufId, n: usize, rounding: Rounding, seed: u64) -> RResult<(), RString>;
            /// `buf[..n] *= factor`.
            fn scale(&mut self, buf: BufId, n: usize, factor: f32) -> RResult<(), RString>;
            /// `out[..n] = a[..n] + b[..n]` (residual forward).
            fn add(&mut self, out: BufId, a: BufId, b: BufId, n: usize) -> RResult<(), RString>;
            /// `dst[..n] += alpha * src[..n]` (residual backward with alpha 1).
            fn axpy(&mut self, dst: BufId, src: BufId, n: usize, alpha: f32) -> RResult<(), RString>;
            /// `out[..n] = f(inp[..n])`.
            fn unary_forward(&mut self, kind: Unary, out: BufId, inp: BufId, n: usize) -> RResult<(), RString>;
            /// `dinp[..n] += f'(inp) * dout`.
            fn unary_backward(&mut self, kind: Unary, dinp: BufId, inp: BufId, dout: BufId, n: usize) -> RResult<(), RString>;
            /// SwiGLU over `inp [rows, 2f]` holding `[gate | up]` per row:
            /// `out[r, j] = silu(gate[r, j]) * up[r, j]`, `out [rows, f]`.
            fn swiglu_forward(&mut self, out: BufId, inp: BufId, rows: usize, f: usize) -> RResult<(), RString>;
            /// Accumulates `dinp [rows, 2f]` from `dout [rows, f]`.
            fn swiglu_backward(&mut self, dinp: BufId, inp: BufId, dout: BufId, rows: usize, f: usize) -> RResult<(), RString>;

            // ---- reductions and the step's statistics -----------------------

            /// `dst[slot] (op)= reduce(src[..n])` on the backend (dst f32; see
            /// `Reduce`): the loss and the gradient norm never leave the device
            /// per micro-batch or per tensor.
            fn reduce(&mut self, kind: Reduce, dst: BufId, slot: usize, src: BufId, n: usize) -> RResult<(), RString>;
            /// From a step-stats block (`kiln_abi::stats`): writes the gradient
            /// factor (unscale by `inv_loss_scale`, clip to `max_norm` when > 0),
            /// the skip flag and the norm, as `stats::step_control_reference`.
            fn step_control(&mut self, stats: BufId, max_norm: f32, inv_loss_scale: f32) -> RResult<(), RString>;

            // ---- layers -----------------------------------------------------

            /// See `EmbeddingArgs`.
            fn embedding_forward(&mut self, args: EmbeddingArgs) -> RResult<(), RString>;
            /// See `EmbeddingBackwardArgs`.
            fn embedding_backward(&mut self, args: EmbeddingBackwardArgs) -> RResult<(), RString>;
            /// See `MatmulArgs`.
            fn matmul(&mut self, args: MatmulArgs) -> RResult<(), RString>;
            /// `dbias[j] += sum_i dout[i, j]` over `rows x cols`.
            fn bias_backward(&mut self, dbias: BufId, dout: BufId, rows: usize, cols: usize) -> RResult<(), RString>;
            /// LayerNorm or RMSNorm, optionally fused with a residual add: `NormArgs`.
            fn norm_forward(&mut self, args: NormArgs) -> RResult<(), RString>;
            /// See `NormBackwardArgs`.
            fn norm_backward(&mut self, args: NormBackwardArgs) -> RResult<(), RString>;
            /// Rotary embeddings in place (forward, or backward with `inverse`): `RopeArgs`.
            fn rope(&mut self, args: RopeArgs) -> RResult<(), RString>;
            /// f32 elements of the attention workspace for `shape`.
            fn attention_workspace_len(&mut self, shape: AttentionShape) -> RResult<usize, RString>;
            /// Causal (grouped-query, optionally windowed, optionally packed)
            /// self-attention: `AttentionArgs`.
            fn attention_forward(&mut self, args: AttentionArgs) -> RResult<(), RString>;
            /// See `AttentionBackwardArgs`.
            fn attention_backward(&mut self, args: AttentionBackwardArgs) -> RResult<(), RString>;
            /// Attention over a KV cache (generation): `KvAttentionArgs`.
            fn attention_kv_forward(&mut self, args: KvAttentionArgs) -> RResult<(), RString>;
            /// Fused softmax + cross-entropy over `rows` rows of `logits [rows,Vp]`
            /// (softmax over the first `v` columns): `losses[i] = lse[i] -
            /// logits[i, targets[i]]`, `lse[i]` the log-sum-exp (both f32
            /// `[rows]`). A target `>= v` means "ignore": loss 0. The probabilities
            /// are never stored.
            fn crossentropy_forward(&mut self, losses: BufId, lse: BufId, logits: BufId, targets: BufId, rows: usize, v: usize, vp: usize) -> RResult<(), RString>;
            /// **Overwrites** `dlogits[i,j] = dlosses[i] * (softmax(logits)[i,j] -
            /// [j == targets[i]])` for `j < v`, 0 in padding columns and ignored
            /// rows, from the forward's `lse`. `dlogits` may be `logits` itself
            /// (in place, as llm.c does). `dlosses [rows]` carries the loss weights.
            fn crossentropy_backward(&mut self, dlogits: BufId, logits: BufId, lse: BufId, targets: BufId, dlosses: BufId, rows: usize, v: usize, vp: usize) -> RResult<(), RString>;
            /// Softmax over the last dimension of `inp [rows, cols]` into `out`
            /// (f32), and optionally each row's log-sum-exp into `lse [rows]`.
            fn softmax_forward(&mut self, out: BufId, lse: ROption<BufId>, inp: BufId, rows: usize, cols: usize) -> RResult<(), RString>;
            /// `dinp += out * (dout - sum_j dout*out) + dlse * out` per row (the
            /// `dlse` term is the router z-loss's path).
            fn softmax_backward(&mut self, dinp: BufId, out: BufId, dout: BufId, dlse: ROption<BufId>, rows: usize, cols: usize) -> RResult<(), RString>;

            // ---- routing (mixture of experts) -------------------------------

            /// Per row of `scores [rows, cols]` (f32), the `k` columns with the
            /// largest `scores + bias[col]` (`bias [cols]` only selects, as
            /// DeepSeek-V3's balancing bias), largest first, ties to the lower
            /// column: `indices` (u32) and their `values = scores` (no bias),
            /// both `[rows, k]`.
            fn topk_forward(&mut self, values: BufId, indices: BufId, scores: BufId, bias: ROption<BufId>, rows: usize, cols: usize, k: usize) -> RResult<(), RString>;
            /// `dscores[r, indices[r, j]] += dvalues[r, j]`.
            fn topk_backward(&mut self, dscores: BufId, dvalues: BufId, indices: BufId, rows: usize, cols: usize, k: usize) -> RResult<(), RString>;
            /// `out[r, :] = inp[r, :] / sum(inp[r, :])` (gates renormalised over
            /// the chosen experts; f32).
            fn normalize_rows_forward(&mut self, out: BufId, inp: BufId, rows: usize, cols: usize) -> RResult<(), RString>;
            /// `dinp[r, :] += (dout - sum(dout * out)) / sum(inp[r, :])`.
            fn normalize_rows_backward(&mut self, dinp: BufId, inp: BufId, out: BufId, dout: BufId, rows: usize, cols: usize) -> RResult<(), RString>;
            /// Row gather (MoE dispatch): `out[i, :] = src[indices[i], :]` for `i < n`.
            fn gather_rows(&mut self, out: BufId, src: BufId, indices: BufId, n: usize, cols: usize) -> RResult<(), RString>;
            /// Weighted scatter-add (MoE combine, and gather's backward):
            /// `dst[indices[i], :] += weights[i] * src[i, :]` (weight 1 without
            /// `weights`), summed in order of `i` (deterministic).
            fn scatter_add_rows(&mut self, dst: BufId, src: BufId, indices: BufId, weights: ROption<BufId>, n: usize, cols: usize) -> RResult<(), RString>;
            /// `out[i] += dot(a[a_indices[i] or i, :], b[i, :])` (the gate
            /// gradient of a weighted combine; `out` f32).
            fn rows_dot(&mut self, out: BufId, a: BufId, a_indices: ROption<BufId>, b: BufId, n: usize, cols: usize) -> RResult<(), RString>;
            /// `counts[indices[i]] += 1` for `i < n` (f32 counts, `[e]`); an
            /// index `>= e` is an error.
            fn index_counts(&mut self, counts: BufId, indices: BufId, n: usize, e: usize) -> RResult<(), RString>;

            // ---- optimizer --------------------------------------------------

            /// See `AdamWArgs`.
            fn adamw(&mut self, args: AdamWArgs) -> RResult<(), RString>;

            // ---- communication (device communicators; optional) -------------

            /// A new unique id for `comm_init` (made on one rank, broadcast to
            /// the others by the host, e.g. over MPI).
            fn comm_unique_id(&mut self) -> RResult<RVec<u8>, RString>;
            /// Joins the communicator `unique_id` as `rank` of `world`.
            fn comm_init(&mut self, unique_id: RSlice<'_, u8>, rank: usize, world: usize) -> RResult<CommId, RString>;
            /// Issues one collective (see `CollectiveArgs`) on the communication stream.
            fn collective(&mut self, args: CollectiveArgs) -> RResult<(), RString>;
            /// Makes later compute wait for every collective issued on `comm`
            /// (an event between the streams; no host sync).
            fn comm_wait(&mut self, comm: CommId) -> RResult<(), RString>;
            /// Ends a communicator.
            #[sabi(last_prefix_field)]
            fn comm_destroy(&mut self, comm: CommId) -> RResult<(), RString>;
        }
    };
}

/// Declares the `Backend` trait from the method list.
macro_rules! declare_backend_trait {
    ($($body:tt)*) => {
        /// The compute interface. Implementations own their buffers; a
        /// [`BufId`] is valid only for the backend that returned it.
        #[sabi_trait]
        pub trait Backend: Send + Sync {
            $($body)*
        }
    };
}

for_each_backend_method!(declare_backend_trait);

/// Collects the method names from the list.
macro_rules! declare_method_names {
    ($( $(#[$attr:meta])* fn $name:ident(&mut self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        /// Every `Backend` method name, in declaration order (fault injection,
        /// call counting, capability lists).
        pub const METHODS: &[&str] = &[$(stringify!($name)),*];
    };
}

for_each_backend_method!(declare_method_names);

/// The methods that are ops (everything but buffer management and `info`):
/// what `BackendInfo::ops` lists.
pub fn op_names() -> impl Iterator<Item = &'static str> {
    const NOT_OPS: &[&str] = &[
        "info",
        "alloc",
        "free",
        "view",
        "buffer_info",
        "upload",
        "download",
        "synchronize",
        "host_region",
        "attention_workspace_len",
    ];
    METHODS.iter().copied().filter(|m| !NOT_OPS.contains(m))
}
