//! [`Guarded`]: a [`Backend`] wrapper that keeps panics on the plugin's side
//! of the FFI boundary.
//!
//! A panic that reaches an abi_stable vtable shim ends the host process
//! (abi_stable prints "Attempted to panic across the ffi boundary" and
//! exits), so every method runs its body in [`guard`], whatever the wrapped
//! backend does itself. The same wrapper injects faults for tests
//! (`panic_on=OP`).

use std::panic::{catch_unwind, AssertUnwindSafe};

use kiln_abi::{
    guard::guard, AdamWArgs, Backend, BackendInfo, BufId, BufInfoPair, DType, MatmulArgs, RResult,
    RSlice, RSliceMut, RString, RVec,
};

/// Names of the ops `panic_on` accepts (every method that returns `RResult`).
pub const OPS: &[&str] = &[
    "alloc",
    "free",
    "buffer_info",
    "upload",
    "download",
    "synchronize",
    "zero",
    "copy",
    "cast",
    "scale",
    "add",
    "accumulate",
    "sum_squares",
    "encoder_forward",
    "encoder_backward",
    "matmul",
    "bias_backward",
    "layernorm_forward",
    "layernorm_backward",
    "gelu_forward",
    "gelu_backward",
    "attention_forward",
    "attention_backward",
    "attention_kv_forward",
    "crossentropy_forward",
    "crossentropy_backward",
    "adamw",
    "encoder_forward_at",
    "encoder_forward_positions",
    "encoder_backward_positions",
    "attention_forward_segments",
];

/// Wraps a backend so that none of its panics cross the boundary.
pub struct Guarded<B> {
    inner: B,
    panic_on: Option<String>,
}

impl<B: Backend> Guarded<B> {
    /// `panic_on`: an op name from [`OPS`] that panics before running
    /// (fault injection for tests of the host); `None` in normal use.
    pub fn new(inner: B, panic_on: Option<String>) -> Guarded<B> {
        Guarded { inner, panic_on }
    }

    fn inject(&self, op: &str) {
        if self.panic_on.as_deref() == Some(op) {
            panic!("injected fault (panic_on={op})");
        }
    }
}

/// `guarded!(self, op, inner call)`: runs the call inside `guard("op")`.
macro_rules! guarded {
    ($self:ident, $op:literal, $call:expr) => {{
        debug_assert!(OPS.contains(&$op));
        guard($op, || {
            $self.inject($op);
            $call
        })
    }};
}

impl<B: Backend> Backend for Guarded<B> {
    fn info(&self) -> BackendInfo {
        // `info` cannot return an error: a panic becomes a telling placeholder.
        catch_unwind(AssertUnwindSafe(|| self.inner.info())).unwrap_or_else(|_| BackendInfo {
            name: "unknown".into(),
            device: "unknown (the backend's info() panicked)".into(),
            dtypes: RVec::new(),
        })
    }

    fn alloc(&mut self, dtype: DType, len: usize) -> RResult<BufId, RString> {
        guarded!(self, "alloc", self.inner.alloc(dtype, len))
    }
    fn free(&mut self, buf: BufId) -> RResult<(), RString> {
        guarded!(self, "free", self.inner.free(buf))
    }
    fn buffer_info(&self, buf: BufId) -> RResult<BufInfoPair, RString> {
        guarded!(self, "buffer_info", self.inner.buffer_info(buf))
    }
    fn upload(&mut self, buf: BufId, bytes: RSlice<'_, u8>) -> RResult<(), RString> {
        guarded!(self, "upload", self.inner.upload(buf, bytes))
    }
    fn download(&mut self, buf: BufId, out: RSliceMut<'_, u8>) -> RResult<(), RString> {
        guarded!(self, "download", self.inner.download(buf, out))
    }
    fn synchronize(&mut self) -> RResult<(), RString> {
        guarded!(self, "synchronize", self.inner.synchronize())
    }
    fn zero(&mut self, buf: BufId) -> RResult<(), RString> {
        guarded!(self, "zero", self.inner.zero(buf))
    }
    fn copy(&mut self, dst: BufId, src: BufId, n: usize) -> RResult<(), RString> {
        guarded!(self, "copy", self.inner.copy(dst, src, n))
    }
    fn cast(&mut self, dst: BufId, src: BufId, n: usize) -> RResult<(), RString> {
        guarded!(self, "cast", self.inner.cast(dst, src, n))
    }
    fn scale(&mut self, buf: BufId, n: usize, factor: f32) -> RResult<(), RString> {
        guarded!(self, "scale", self.inner.scale(buf, n, factor))
    }
    fn add(&mut self, out: BufId, a: BufId, b: BufId, n: usize) -> RResult<(), RString> {
        guarded!(self, "add", self.inner.add(out, a, b, n))
    }
    fn accumulate(&mut self, dst: BufId, src: BufId, n: usize) -> RResult<(), RString> {
        guarded!(self, "accumulate", self.inner.accumulate(dst, src, n))
    }
    fn sum_squares(&mut self, buf: BufId, n: usize) -> RResult<f64, RString> {
        guarded!(self, "sum_squares", self.inner.sum_squares(buf, n))
    }
    fn encoder_forward(
        &mut self,
        out: BufId,
        tokens: BufId,
        wte: BufId,
        wpe: BufId,
        b: usize,
        t: usize,
        c: usize,
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "encoder_forward",
            self.inner.encoder_forward(out, tokens, wte, wpe, b, t, c)
        )
    }
    fn encoder_backward(
        &mut self,
        dwte: BufId,
        dwpe: BufId,
        dout: BufId,
        tokens: BufId,
        b: usize,
        t: usize,
        c: usize,
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "encoder_backward",
            self.inner
                .encoder_backward(dwte, dwpe, dout, tokens, b, t, c)
        )
    }
    fn matmul(&mut self, args: MatmulArgs) -> RResult<(), RString> {
        guarded!(self, "matmul", self.inner.matmul(args))
    }
    fn bias_backward(
        &mut self,
        dbias: BufId,
        dout: BufId,
        rows: usize,
        cols: usize,
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "bias_backward",
            self.inner.bias_backward(dbias, dout, rows, cols)
        )
    }
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
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "layernorm_forward",
            self.inner
                .layernorm_forward(out, mean, rstd, inp, weight, bias, rows, cols, eps)
        )
    }
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
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "layernorm_backward",
            self.inner.layernorm_backward(
                dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, cols
            )
        )
    }
    fn gelu_forward(&mut self, out: BufId, inp: BufId, n: usize) -> RResult<(), RString> {
        guarded!(self, "gelu_forward", self.inner.gelu_forward(out, inp, n))
    }
    fn gelu_backward(
        &mut self,
        dinp: BufId,
        inp: BufId,
        dout: BufId,
        n: usize,
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "gelu_backward",
            self.inner.gelu_backward(dinp, inp, dout, n)
        )
    }
    fn attention_forward(
        &mut self,
        out: BufId,
        att: BufId,
        qkv: BufId,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "attention_forward",
            self.inner.attention_forward(out, att, qkv, b, t, c, nh)
        )
    }
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
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "attention_backward",
            self.inner
                .attention_backward(dqkv, dout, qkv, att, b, t, c, nh)
        )
    }
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
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "attention_kv_forward",
            self.inner
                .attention_kv_forward(out, qkv, k_cache, v_cache, b, t_new, t_past, t_max, c, nh)
        )
    }
    fn crossentropy_forward(
        &mut self,
        losses: BufId,
        probs: BufId,
        logits: BufId,
        targets: BufId,
        rows: usize,
        v: usize,
        vp: usize,
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "crossentropy_forward",
            self.inner
                .crossentropy_forward(losses, probs, logits, targets, rows, v, vp)
        )
    }
    fn crossentropy_backward(
        &mut self,
        dlogits: BufId,
        probs: BufId,
        targets: BufId,
        dlosses: BufId,
        rows: usize,
        v: usize,
        vp: usize,
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "crossentropy_backward",
            self.inner
                .crossentropy_backward(dlogits, probs, targets, dlosses, rows, v, vp)
        )
    }
    fn adamw(&mut self, args: AdamWArgs) -> RResult<(), RString> {
        guarded!(self, "adamw", self.inner.adamw(args))
    }
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
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "encoder_forward_at",
            self.inner
                .encoder_forward_at(out, tokens, wte, wpe, b, t, c, pos0)
        )
    }
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
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "encoder_forward_positions",
            self.inner
                .encoder_forward_positions(out, tokens, positions, wte, wpe, b, t, c)
        )
    }
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
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "encoder_backward_positions",
            self.inner
                .encoder_backward_positions(dwte, dwpe, dout, tokens, positions, b, t, c)
        )
    }
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
    ) -> RResult<(), RString> {
        guarded!(
            self,
            "attention_forward_segments",
            self.inner
                .attention_forward_segments(out, att, qkv, segments, b, t, c, nh)
        )
    }
}
