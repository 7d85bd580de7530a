//! The argument structs and small enums of the Backend ops (ABI generation 2).
//!
//! Ops with more than a handful of operands take one `#[repr(C)]` struct, so
//! that a reader sees every operand by name at the call site. Optional
//! operands are `ROption<BufId>`. Shapes are explicit element counts; a
//! buffer (or view) may be larger than an op needs, never smaller.

use abi_stable::{
    std_types::{ROption, RVec},
    StableAbi,
};

use crate::dtype::BufId;

/// How a float is narrowed to a 16-bit type.
///
/// `Stochastic` is deterministic: element `i` of a call with seed `s` uses the
/// 16 random bits `splitmix64(s + i * 0x9E37_79B9_7F4A_7C15) & 0xFFFF`
/// (see [`crate::rounding`]), so every backend gives the same bits.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rounding {
    NearestEven,
    Stochastic,
}

/// An activation applied by [`crate::Backend::unary_forward`] (and fused
/// after a matmul by [`Epilogue::Gelu`]).
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    /// tanh approximation (GPT-2's `gelu_new`).
    Gelu,
    /// `x * sigmoid(x)` (SwiGLU's gate, Llama).
    Silu,
    Sigmoid,
    Relu,
}

/// Work fused after a matmul's accumulation.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    None,
    /// `out = gelu(alpha * a@b + bias)`; the pre-activation goes to
    /// [`MatmulArgs::pre_act`] (required) for the backward. Needs `beta = 0`.
    Gelu,
}

/// `out[m,n] = epilogue(alpha * op(a)[m,k] @ op(b)[k,n] + beta * out + bias[n])`.
///
/// `a` is `[m,k]` (or `[k,m]` when `trans_a`), `b` is `[k,n]` (or `[n,k]` when
/// `trans_b`), each row-major with leading dimension (row stride) `lda`,
/// `ldb`, `ldc` in elements; 0 means packed (the row length). A leading
/// dimension lets an op read or write a column block, e.g. the q part of a
/// fused qkv output through a view that starts at its first column.
/// Every operand may be f32, bf16 or f16; the product accumulates in f32 and
/// is rounded once when `out` is 16-bit. `beta = 0` ignores the old contents
/// of `out` (even NaN); `beta = 1` accumulates.
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
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
    pub epilogue: Epilogue,
    /// `[m, n]` (stride `ldc`): the pre-activation, written when the
    /// epilogue is not `None`.
    pub pre_act: ROption<BufId>,
}

impl MatmulArgs {
    /// A packed `out = a @ b` (or with the given transposes), no bias or epilogue.
    pub fn new(out: BufId, a: BufId, b: BufId, m: usize, n: usize, k: usize) -> MatmulArgs {
        MatmulArgs {
            out,
            a,
            b,
            bias: ROption::RNone,
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            lda: 0,
            ldb: 0,
            ldc: 0,
            alpha: 1.0,
            beta: 0.0,
            epilogue: Epilogue::None,
            pre_act: ROption::RNone,
        }
    }
}

/// Token (+ position) embedding:
/// `out[b,t,:] = wte[tokens[b,t],:] + wpe[pos(b,t),:]` where
/// `pos(b,t) = positions[b,t]` when given, else `pos0 + t`; without `wpe`
/// (Llama: rotary positions) only the token rows are copied.
/// `tokens`/`positions` u32 `[B,T]`; `wte [V?,C]`, `wpe [maxT,C]`, `out [B,T,C]`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct EmbeddingArgs {
    pub out: BufId,
    pub tokens: BufId,
    pub wte: BufId,
    pub wpe: ROption<BufId>,
    pub positions: ROption<BufId>,
    pub pos0: usize,
    pub b: usize,
    pub t: usize,
    pub c: usize,
}

/// Backward of [`EmbeddingArgs`]: `dwte[tokens[b,t],:] += dout[b,t,:]`,
/// `dwpe[pos(b,t),:] += dout[b,t,:]`; an absent gradient is not computed
/// (frozen embeddings). Deterministic: rows are summed in a fixed order.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct EmbeddingBackwardArgs {
    pub dwte: ROption<BufId>,
    pub dwpe: ROption<BufId>,
    pub dout: BufId,
    pub tokens: BufId,
    pub positions: ROption<BufId>,
    pub pos0: usize,
    pub b: usize,
    pub t: usize,
    pub c: usize,
}

#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// `(x - mean) * rstd * w + b`, biased variance; saves `mean` and `rstd`.
    LayerNorm,
    /// `x * rstd * w` with `rstd = 1/sqrt(mean(x^2) + eps)` (Llama); saves `rstd`.
    RmsNorm,
}

/// A normalisation over the last dimension of `rows x cols`, optionally
/// fused with the residual add before it: with `residual`, the op first
/// writes `residual_out = inp + residual` (required then) and normalises
/// that. Statistics (`mean`, `rstd`, `[rows]`) are always f32; `inp`,
/// `residual`, `out`, `weight` and `bias` may be 16-bit.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct NormArgs {
    pub kind: NormKind,
    pub out: BufId,
    /// LayerNorm only (required there).
    pub mean: ROption<BufId>,
    pub rstd: BufId,
    pub inp: BufId,
    pub weight: BufId,
    /// LayerNorm only (optional).
    pub bias: ROption<BufId>,
    pub residual: ROption<BufId>,
    pub residual_out: ROption<BufId>,
    pub rows: usize,
    pub cols: usize,
    pub eps: f32,
}

/// Backward of [`NormArgs`]; accumulates `dinp` and, when given, `dweight`
/// and `dbias`. `inp` is what was normalised (the `residual_out` of a fused
/// forward).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct NormBackwardArgs {
    pub kind: NormKind,
    pub dinp: BufId,
    pub dweight: ROption<BufId>,
    pub dbias: ROption<BufId>,
    pub dout: BufId,
    pub inp: BufId,
    pub weight: BufId,
    pub mean: ROption<BufId>,
    pub rstd: BufId,
    pub rows: usize,
    pub cols: usize,
}

/// Rotary position embedding, applied **in place** to `n_heads` heads of
/// `head_dim` columns starting at column `col_offset` of every row of
/// `buf [B*T, row_width]` (the q or k part of a fused qkv buffer).
/// Half-split rotation (Hugging Face `rotate_half`): for `j < head_dim/2`,
/// `x1 = x[j]`, `x2 = x[j + head_dim/2]`,
/// `x[j] = x1 cos - x2 sin`, `x[j + head_dim/2] = x2 cos + x1 sin` with
/// `cos = cos[pos, j]`, `sin = sin[pos, j]` (tables `[maxT, head_dim/2]`,
/// f32, computed by the host so that rope_theta and rope scaling stay host
/// policy). `inverse` rotates by `-angle`: that is the backward, applied in
/// place to the gradient. `pos` as in [`EmbeddingArgs`].
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RopeArgs {
    pub buf: BufId,
    pub cos: BufId,
    pub sin: BufId,
    pub positions: ROption<BufId>,
    pub pos0: usize,
    pub b: usize,
    pub t: usize,
    pub row_width: usize,
    pub col_offset: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub inverse: bool,
}

/// The shape of a (grouped-query) causal self-attention.
///
/// `qkv [B,T,(nh + 2 nkv) * hd]` holds the `nh` query heads, then `nkv` key
/// heads, then `nkv` value heads, each `hd` wide; query head `h` uses
/// key/value head `h / (nh / nkv)` (`nh` a multiple of `nkv`; `nh == nkv` is
/// multi-head attention, GPT-2's `[q|k|v]` layout). Query `t` attends to keys
/// `s <= t`, and with `window > 0` only to `s > t - window` (Mistral's
/// sliding window).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    pub window: usize,
}

/// Attention forward: writes `out [B,T,nh*hd]` (heads concatenated) and
/// whatever the backend keeps for backward in `workspace`, an f32 buffer of
/// at least [`crate::Backend::attention_workspace_len`] elements (a backend
/// may keep the probabilities, or only per-row log-sum-exps and recompute
/// them, flash style, as the CPU backend does). With `segments` (u32 `[B,T]`) a query sees only keys of its own
/// segment (packed rows). `scale` multiplies q·k (usually `1/sqrt(hd)`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AttentionArgs {
    pub out: BufId,
    pub workspace: BufId,
    pub qkv: BufId,
    pub segments: ROption<BufId>,
    pub shape: AttentionShape,
    pub scale: f32,
}

/// Attention backward: accumulates `dqkv` from `dout`, given the forward's
/// `qkv`, `out` and `workspace` (unchanged since that forward) and the same
/// `segments` (a backend that recomputes the probabilities needs the mask).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AttentionBackwardArgs {
    pub dqkv: BufId,
    pub dout: BufId,
    pub qkv: BufId,
    pub out: BufId,
    pub workspace: BufId,
    pub segments: ROption<BufId>,
    pub shape: AttentionShape,
    pub scale: f32,
}

/// Incremental attention for generation with a KV cache. `qkv [B,Tn,...]`
/// (layout of [`AttentionShape`], `shape.t` = Tn new positions
/// `t_past..t_past+Tn`); their keys and values are stored into
/// `k_cache`/`v_cache` (`[B, nkv, t_max, hd]` each), then each new query
/// attends causally (and within `shape.window`) to cache positions
/// `0..=its own`. Writes `out [B,Tn,nh*hd]`. Equals [`AttentionArgs`] on the
/// full prefix.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct KvAttentionArgs {
    pub out: BufId,
    pub qkv: BufId,
    pub k_cache: BufId,
    pub v_cache: BufId,
    pub shape: AttentionShape,
    pub t_past: usize,
    pub t_max: usize,
    pub scale: f32,
}

/// Per-buffer reductions accumulated into a slot of an f32 buffer on the
/// backend (computed in f64 per call, then added in f32).
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    Sum,
    SumSquares,
    /// `dst = max(dst, max |x|)`; NaN wins.
    MaxAbs,
}

/// One AdamW update (PyTorch `torch.optim.AdamW` semantics) over `n`
/// elements, with the effective gradient
/// `g = grad * grad_scale * (control ? control[STAT_GRAD_FACTOR] : 1)`:
/// `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
/// p -= lr * (m / (1-b1^step) / (sqrt(v / (1-b2^step)) + eps) + weight_decay * p)`.
/// `step` counts from 1. `params` (the f32 master), `m` and `v` are f32;
/// `grads` may be 16-bit. With `params_16`, the updated master is also
/// written there, narrowed with `rounding` (seed `seed`): the 16-bit working
/// copy a mixed-precision model computes with. With `control` (a step-stats
/// view, see [`crate::stats`]) whose `STAT_SKIP` slot is non-zero, nothing
/// is written: the step is skipped on the device, with no host round trip.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AdamWArgs {
    pub params: BufId,
    pub grads: BufId,
    pub m: BufId,
    pub v: BufId,
    pub params_16: ROption<BufId>,
    pub rounding: Rounding,
    pub seed: u64,
    pub n: usize,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub grad_scale: f32,
    pub control: ROption<BufId>,
    pub step: u64,
}

/// A communicator created by [`crate::Backend::comm_init`].
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CommId(pub u64);

#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CollectiveKind {
    AllReduceSum,
    AllReduceAvg,
    /// Rank r receives the sum of every rank's chunk r (`count` elements).
    ReduceScatterSum,
    /// Every rank's `count` elements, concatenated in rank order.
    AllGather,
    /// `count` elements from rank `peer` to every rank (in `recv`).
    Broadcast,
    Send,
    Recv,
    /// Chunk j of `send` goes to rank j; with `send_counts`/`recv_counts`
    /// (one entry per rank, elements) the chunks have those sizes (all-to-allv).
    AllToAll,
}

/// One collective on device buffers (views allowed), run by the backend on
/// its communication stream after all previously issued ops. A later op
/// that touches `recv` must come after [`crate::Backend::comm_wait`].
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct CollectiveArgs {
    pub comm: CommId,
    pub kind: CollectiveKind,
    pub send: BufId,
    pub recv: BufId,
    /// Elements: of the whole buffer for all-reduce, broadcast, send/recv;
    /// per rank for reduce-scatter, all-gather and all-to-all.
    pub count: usize,
    /// Root of a broadcast, peer of a send or receive.
    pub peer: usize,
    pub send_counts: RVec<usize>,
    pub recv_counts: RVec<usize>,
}

/// Host memory behind a buffer, on backends whose buffers live in host
/// memory (the CPU): a communicator (MPI, threads) then moves bytes without
/// staging copies. Valid until the buffer is freed or the next op writes it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct HostRegion {
    pub ptr: *mut u8,
    pub bytes: usize,
}

// SAFETY: a HostRegion is a plain address handed to one caller, who uses it
// only between backend calls on its own thread (see `Backend::host_region`).
unsafe impl Send for HostRegion {}
