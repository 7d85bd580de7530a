//! Causal self-attention: workspace size, forward, backward, KV-cache forward.

use kiln_abi::{AttentionArgs, AttentionBackwardArgs, AttentionShape, KvAttentionArgs};

use super::CpuBackend;
use crate::ops::{
    self,
    attention::{Shape, ROW_STATS},
};
use crate::validate::{ensure, product};

/// Element counts of one attention call.
struct Sizes {
    /// `B*T` (segments).
    bt: usize,
    /// `B*T*(nh+2nkv)*hd`.
    qkv: usize,
    /// `B*T*nh*hd`.
    out: usize,
    /// The saved per-row softmax statistics `B*nh*T*ROW_STATS` (no
    /// probabilities: backward recomputes them).
    workspace: usize,
}

fn check_shape(op: &str, s: AttentionShape, scale: Option<f32>) -> Result<(Shape, Sizes), String> {
    ensure(
        s.nh > 0 && s.nkv > 0 && s.nh.is_multiple_of(s.nkv),
        op,
        || {
            format!(
                "nh = {} must be a positive multiple of nkv = {} (grouped-query attention)",
                s.nh, s.nkv
            )
        },
    )?;
    ensure(s.hd > 0, op, || "hd (head size) must be positive".into())?;
    if let Some(scale) = scale {
        ensure(scale.is_finite(), op, || {
            format!("scale must be finite, got {scale}")
        })?;
    }
    let bt = product(op, "B*T", &[s.b, s.t])?;
    let heads = s.nkv.checked_mul(2).and_then(|k| k.checked_add(s.nh));
    let heads = heads.ok_or_else(|| format!("{op}: nh + 2 nkv overflows"))?;
    let sizes = Sizes {
        bt,
        qkv: product(op, "B*T*(nh+2nkv)*hd", &[bt, heads, s.hd])?,
        out: product(op, "B*T*nh*hd", &[bt, s.nh, s.hd])?,
        workspace: product(op, "B*nh*T*2", &[s.b, s.nh, s.t, ROW_STATS])?,
    };
    let shape = Shape {
        b: s.b,
        t: s.t,
        nh: s.nh,
        nkv: s.nkv,
        hd: s.hd,
        window: s.window,
    };
    Ok((shape, sizes))
}

impl CpuBackend {
    pub(super) fn attention_workspace_len_impl(
        &mut self,
        shape: AttentionShape,
    ) -> Result<usize, String> {
        check_shape("attention_workspace_len", shape, None).map(|(_, s)| s.workspace)
    }

    pub(super) fn attention_forward_impl(&mut self, a: AttentionArgs) -> Result<(), String> {
        let op = "attention_forward";
        let (sh, n) = check_shape(op, a.shape, Some(a.scale))?;
        let engine = self.engine;
        let outs = [("out", Some(a.out)), ("workspace", Some(a.workspace))];
        let ins = [("qkv", Some(a.qkv)), ("segments", a.segments.into_option())];
        self.exec(op, &outs, &ins, |o| {
            let qkv = o.widened("qkv", n.qkv)?;
            let segments = o.u32_opt("segments", n.bt)?;
            let mut out = o.float_mut("out", n.out)?;
            let ws = o.f32_mut("workspace", n.workspace)?;
            if n.out > 0 {
                ops::attention::forward(engine, out.f32(), ws, &qkv, segments, sh, a.scale);
            }
            out.finish();
            Ok(())
        })
    }

    pub(super) fn attention_backward_impl(
        &mut self,
        a: AttentionBackwardArgs,
    ) -> Result<(), String> {
        let op = "attention_backward";
        let (sh, n) = check_shape(op, a.shape, Some(a.scale))?;
        let engine = self.engine;
        // `out` is not read (the softmax backward's row sums `p.dp` come
        // from the recomputed probabilities, exact whatever out's dtype) but
        // is checked like every operand. `segments` must be the forward's.
        let ins = [
            ("dout", Some(a.dout)),
            ("qkv", Some(a.qkv)),
            ("out", Some(a.out)),
            ("workspace", Some(a.workspace)),
            ("segments", a.segments.into_option()),
        ];
        self.exec(op, &[("dqkv", Some(a.dqkv))], &ins, |o| {
            let dout = o.widened("dout", n.out)?;
            let qkv = o.widened("qkv", n.qkv)?;
            o.float("out", n.out)?;
            let segments = o.u32_opt("segments", n.bt)?;
            let ws = o.f32("workspace", n.workspace)?;
            let mut d = o.float_mut("dqkv", n.qkv)?;
            if n.out > 0 {
                ops::attention::backward(engine, d.f32(), &dout, &qkv, ws, segments, sh, a.scale);
            }
            d.finish();
            Ok(())
        })
    }

    pub(super) fn attention_kv_forward_impl(&mut self, a: KvAttentionArgs) -> Result<(), String> {
        let op = "attention_kv_forward";
        let (sh, n) = check_shape(op, a.shape, Some(a.scale))?;
        let end = a.t_past.checked_add(a.shape.t);
        ensure(end.is_some_and(|e| e <= a.t_max), op, || {
            format!(
                "t_past + Tn = {} + {} exceeds the cache length t_max = {}",
                a.t_past, a.shape.t, a.t_max
            )
        })?;
        let n_cache = product(op, "B*nkv*t_max*hd", &[sh.b, sh.nkv, a.t_max, sh.hd])?;
        let outs = [
            ("out", Some(a.out)),
            ("k_cache", Some(a.k_cache)),
            ("v_cache", Some(a.v_cache)),
        ];
        self.exec(op, &outs, &[("qkv", Some(a.qkv))], |o| {
            let qkv = o.widened("qkv", n.qkv)?;
            let mut out = o.float_mut("out", n.out)?;
            let mut kc = o.float_mut("k_cache", n_cache)?;
            let mut vc = o.float_mut("v_cache", n_cache)?;
            if n.out > 0 {
                ops::attention::kv_forward(
                    out.f32(),
                    &qkv,
                    kc.f32(),
                    vc.f32(),
                    sh,
                    a.t_past,
                    a.t_max,
                    a.scale,
                );
            }
            out.finish();
            kc.finish();
            vc.finish();
            Ok(())
        })
    }
}
