#![allow(non_local_definitions)] // emitted by #[sabi_trait] on recent rustc; harmless
#![allow(clippy::too_many_arguments)] // layer ops take explicit dimensions by design
//! The Backend interface: buffers plus a fixed, layer-level op set.
//!
//! Conventions every implementation follows (the CPU backend is the reference):
//! - Row-major layouts. `B` batch, `T` sequence, `C` channels, `NH` heads,
//!   `V` real vocabulary, `Vp` padded vocabulary (columns `V..Vp` are padding).
//! - Linear weights are `[out_features, in_features]` (PyTorch `nn.Linear`).
//! - Forward ops overwrite their outputs. **Backward ops accumulate (`+=`)
//!   into every gradient they write**, so gradients from several branches or
//!   micro-batches add up; callers zero gradients when a step starts.
//! - Dimensions are explicit; a buffer may be larger than an op needs (an
//!   arena sized for the largest batch), never smaller: that is an error.
//! - Every op returns `RErr(message)` on bad arguments instead of panicking.
//! - Float ops compute in f32. Where an op accepts 16-bit operands it says so;
//!   accumulation is always f32.

use abi_stable::{
    sabi_trait,
    std_types::{RBox, ROption, RResult, RSlice, RSliceMut, RString, RVec},
    StableAbi,
};

use crate::dtype::{BufId, DType};

/// A backend behind the stable ABI, as the model holds it.
pub type BackendBox = Backend_TO<'static, RBox<()>>;

/// What a backend is, for `kiln plugins list` and logs.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct BackendInfo {
    /// Short name, e.g. "cpu" or "cuda".
    pub name: RString,
    /// The device in words, e.g. "CPU, 2 threads" or "NVIDIA H100".
    pub device: RString,
    /// Element types its buffers support.
    pub dtypes: RVec<DType>,
}

/// `out[m,n] = alpha * op(a)[m,k] @ op(b)[k,n] + beta * out + bias[n]`.
///
/// `a` is `[m,k]` (or `[k,m]` when `trans_a`), `b` is `[k,n]` (or `[n,k]` when
/// `trans_b`). `a` and `b` may be f32, bf16 or f16; `out` and `bias` are f32;
/// the product accumulates in f32. `beta = 0` ignores the old contents of
/// `out` (even NaN); `beta = 1` accumulates.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct MatmulArgs {
    pub out: BufId,
    pub a: BufId,
    pub b: BufId,
    pub bias: ROption<BufId>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

/// One AdamW update (PyTorch `torch.optim.AdamW` semantics) over `n` elements:
/// `g = grad * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
/// p -= lr * (m / (1-b1^step) / (sqrt(v / (1-b2^step)) + eps) + weight_decay * p)`.
/// `step` counts from 1. All four buffers are f32.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AdamWArgs {
    pub params: BufId,
    pub grads: BufId,
    pub m: BufId,
    pub v: BufId,
    pub n: usize,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub grad_scale: f32,
    pub step: u64,
}

/// The compute interface. Implementations own their buffers; a [`BufId`] is
/// valid only for the backend that returned it.
///
/// New methods are added after the last one, so an older plugin still loads
/// where the new method is optional (see docs/adr/0003-abi-stable.md).
#[sabi_trait]
pub trait Backend: Send + Sync {
    /// Name, device and supported dtypes.
    fn info(&self) -> BackendInfo;

    // ---- buffers -------------------------------------------------------

    /// A new buffer of `len` elements, zero-filled.
    fn alloc(&mut self, dtype: DType, len: usize) -> RResult<BufId, RString>;
    fn free(&mut self, buf: BufId) -> RResult<(), RString>;
    /// Element type and length of a live buffer.
    fn buffer_info(&self, buf: BufId) -> RResult<BufInfoPair, RString>;
    /// Copies little-endian element bytes in; `bytes.len()` must equal
    /// `len * dtype.size()`.
    fn upload(&mut self, buf: BufId, bytes: RSlice<'_, u8>) -> RResult<(), RString>;
    /// Copies the whole buffer out as little-endian element bytes.
    fn download(&mut self, buf: BufId, out: RSliceMut<'_, u8>) -> RResult<(), RString>;
    /// Waits for queued work (a no-op on synchronous backends).
    fn synchronize(&mut self) -> RResult<(), RString>;

    // ---- elementwise and reductions ----------------------------------

    fn zero(&mut self, buf: BufId) -> RResult<(), RString>;
    /// `dst[..n] = src[..n]`, same dtype.
    fn copy(&mut self, dst: BufId, src: BufId, n: usize) -> RResult<(), RString>;
    /// `dst[..n] = src[..n]` converted between float dtypes (round to nearest even).
    fn cast(&mut self, dst: BufId, src: BufId, n: usize) -> RResult<(), RString>;
    /// `buf[..n] *= factor` (f32).
    fn scale(&mut self, buf: BufId, n: usize, factor: f32) -> RResult<(), RString>;
    /// `out[..n] = a[..n] + b[..n]` (residual forward, f32).
    fn add(&mut self, out: BufId, a: BufId, b: BufId, n: usize) -> RResult<(), RString>;
    /// `dst[..n] += src[..n]` (residual backward, f32).
    fn accumulate(&mut self, dst: BufId, src: BufId, n: usize) -> RResult<(), RString>;
    /// Sum of squares of `buf[..n]` accumulated in f64 (global gradient norm).
    fn sum_squares(&mut self, buf: BufId, n: usize) -> RResult<f64, RString>;

    // ---- layers --------------------------------------------------------

    /// `out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]`; tokens u32 `[B,T]`,
    /// `wte [Vp,C]`, `wpe [maxT,C]`, `out [B,T,C]`.
    fn encoder_forward(
        &mut self,
        out: BufId,
        tokens: BufId,
        wte: BufId,
        wpe: BufId,
        b: usize,
        t: usize,
        c: usize,
    ) -> RResult<(), RString>;

    /// `dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += dout[b,t,:]`.
    fn encoder_backward(
        &mut self,
        dwte: BufId,
        dwpe: BufId,
        dout: BufId,
        tokens: BufId,
        b: usize,
        t: usize,
        c: usize,
    ) -> RResult<(), RString>;

    /// See [`MatmulArgs`].
    fn matmul(&mut self, args: MatmulArgs) -> RResult<(), RString>;

    /// `dbias[j] += sum_i dout[i, j]` over `rows x cols`.
    fn bias_backward(
        &mut self,
        dbias: BufId,
        dout: BufId,
        rows: usize,
        cols: usize,
    ) -> RResult<(), RString>;

    /// LayerNorm over the last dimension: `out = (x - mean) * rstd * w + b`,
    /// saving `mean [rows]` and `rstd [rows]` for backward (biased variance).
    fn layernorm_forward(
        &mut self,
        out: BufId,
        mean: BufId,
        rstd: BufId,
        inp: BufId,
        weight: BufId,
        bias: BufId,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> RResult<(), RString>;

    /// Accumulates `dinp`, `dweight`, `dbias`.
    fn layernorm_backward(
        &mut self,
        dinp: BufId,
        dweight: BufId,
        dbias: BufId,
        dout: BufId,
        inp: BufId,
        weight: BufId,
        mean: BufId,
        rstd: BufId,
        rows: usize,
        cols: usize,
    ) -> RResult<(), RString>;

    /// GELU, tanh approximation (GPT-2's `gelu_new`), over `n` elements.
    fn gelu_forward(&mut self, out: BufId, inp: BufId, n: usize) -> RResult<(), RString>;

    /// `dinp += gelu'(inp) * dout`.
    fn gelu_backward(
        &mut self,
        dinp: BufId,
        inp: BufId,
        dout: BufId,
        n: usize,
    ) -> RResult<(), RString>;

    /// Causal multi-head self-attention. `qkv [B,T,3C]` holds q, k, v side by
    /// side (head `h` uses columns `h*C/NH..(h+1)*C/NH` of each); saves the
    /// softmax probabilities `att [B,NH,T,T]` (scale `1/sqrt(C/NH)`); writes
    /// `out [B,T,C]` with heads concatenated.
    fn attention_forward(
        &mut self,
        out: BufId,
        att: BufId,
        qkv: BufId,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> RResult<(), RString>;

    /// Accumulates `dqkv` from `dout`, using the saved `att`.
    fn attention_backward(
        &mut self,
        dqkv: BufId,
        dout: BufId,
        qkv: BufId,
        att: BufId,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> RResult<(), RString>;

    /// Incremental attention for generation with a KV cache. `qkv [B,Tn,3C]`
    /// holds the new positions `t_past..t_past+Tn`; their keys and values are
    /// stored into `k_cache`/`v_cache` (`[B,NH,Tmax,C/NH]` each), then each new
    /// query attends causally to cache positions `0..=its own`. Writes
    /// `out [B,Tn,C]`. The result equals `attention_forward` on the full prefix.
    fn attention_kv_forward(
        &mut self,
        out: BufId,
        qkv: BufId,
        k_cache: BufId,
        v_cache: BufId,
        b: usize,
        t_new: usize,
        t_past: usize,
        t_max: usize,
        c: usize,
        nh: usize,
    ) -> RResult<(), RString>;

    /// Fused softmax + cross-entropy over `rows` rows of `logits [rows,Vp]`:
    /// `probs` (same shape) is the softmax over the first `v` columns (padding
    /// columns get 0); `losses[i] = -ln probs[i, targets[i]]`. A target `>= v`
    /// means "ignore": its loss is 0.
    fn crossentropy_forward(
        &mut self,
        losses: BufId,
        probs: BufId,
        logits: BufId,
        targets: BufId,
        rows: usize,
        v: usize,
        vp: usize,
    ) -> RResult<(), RString>;

    /// `dlogits[i,j] += dlosses[i] * (probs[i,j] - [j == targets[i]])` for
    /// `j < v`; padding columns and ignored rows get nothing. `dlosses` carries
    /// the loss weights (mask / normaliser) per row.
    fn crossentropy_backward(
        &mut self,
        dlogits: BufId,
        probs: BufId,
        targets: BufId,
        dlosses: BufId,
        rows: usize,
        v: usize,
        vp: usize,
    ) -> RResult<(), RString>;

    /// See [`AdamWArgs`].
    #[sabi(last_prefix_field)]
    fn adamw(&mut self, args: AdamWArgs) -> RResult<(), RString>;

    // ---- added after the first release (see docs/adr/0003) -------------

    /// [`Backend::encoder_forward`] for positions `pos0..pos0+T`:
    /// `out[b,t,:] = wte[tokens[b,t],:] + wpe[pos0+t,:]` (`wpe` must hold
    /// `pos0+T` rows). Generation embeds new tokens after `pos0` cached ones
    /// with it; `pos0 = 0` is `encoder_forward`, bit for bit.
    fn encoder_forward_at(
        &mut self,
        out: BufId,
        tokens: BufId,
        wte: BufId,
        wpe: BufId,
        b: usize,
        t: usize,
        c: usize,
        pos0: usize,
    ) -> RResult<(), RString>;

    /// [`Backend::encoder_forward`] with an explicit position per token:
    /// `out[b,t,:] = wte[tokens[b,t],:] + wpe[positions[b,t],:]`; positions
    /// u32 `[B,T]`, each below the rows of `wpe`. Packed training batches
    /// restart positions at 0 for every document in a row.
    fn encoder_forward_positions(
        &mut self,
        out: BufId,
        tokens: BufId,
        positions: BufId,
        wte: BufId,
        wpe: BufId,
        b: usize,
        t: usize,
        c: usize,
    ) -> RResult<(), RString>;

    /// Backward of [`Backend::encoder_forward_positions`]:
    /// `dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[positions[b,t],:] += dout[b,t,:]`.
    fn encoder_backward_positions(
        &mut self,
        dwte: BufId,
        dwpe: BufId,
        dout: BufId,
        tokens: BufId,
        positions: BufId,
        b: usize,
        t: usize,
        c: usize,
    ) -> RResult<(), RString>;

    /// [`Backend::attention_forward`] for packed rows: query `t` attends to
    /// keys `s <= t` with `segments[b,s] == segments[b,t]` only (segments u32
    /// `[B,T]`). Masked probabilities are stored as exactly 0 in `att`, so
    /// [`Backend::attention_backward`] (which works from `att`) is its exact
    /// backward. All-equal segments give `attention_forward`, bit for bit.
    fn attention_forward_segments(
        &mut self,
        out: BufId,
        att: BufId,
        qkv: BufId,
        segments: BufId,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> RResult<(), RString>;
}

/// `(dtype, len)` of a buffer, FFI-safe.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufInfoPair {
    pub dtype: DType,
    pub len: usize,
}
