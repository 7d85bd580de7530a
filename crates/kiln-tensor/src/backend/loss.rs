//! Cross-entropy and row softmax.

use kiln_abi::{BufId, ROption};

use super::CpuBackend;
use crate::ops;
use crate::validate::{ensure, product};

/// Checks cross-entropy shapes; returns rows*Vp.
fn ce_sizes(op: &str, rows: usize, v: usize, vp: usize) -> Result<usize, String> {
    ensure(v >= 1 && v <= vp, op, || {
        format!("need 1 <= V <= Vp, got V = {v}, Vp = {vp}")
    })?;
    product(op, "rows*Vp", &[rows, vp])
}

impl CpuBackend {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn crossentropy_forward_impl(
        &mut self,
        losses: BufId,
        lse: BufId,
        logits: BufId,
        targets: BufId,
        rows: usize,
        v: usize,
        vp: usize,
    ) -> Result<(), String> {
        let op = "crossentropy_forward";
        let n = ce_sizes(op, rows, v, vp)?;
        let outs = [("losses", Some(losses)), ("lse", Some(lse))];
        let ins = [("logits", Some(logits)), ("targets", Some(targets))];
        self.exec(op, &outs, &ins, |o| {
            let logits = o.widened("logits", n)?;
            let targets = o.u32("targets", rows)?;
            let (l, s) = (o.f32_mut("losses", rows)?, o.f32_mut("lse", rows)?);
            ops::crossentropy::forward(l, s, &logits, targets, v, vp);
            Ok(())
        })
    }

    /// Overwrites `dlogits`; in place when it is `logits` itself (the same
    /// memory), else from separate logits.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn crossentropy_backward_impl(
        &mut self,
        dlogits: BufId,
        logits: BufId,
        lse: BufId,
        targets: BufId,
        dlosses: BufId,
        rows: usize,
        v: usize,
        vp: usize,
    ) -> Result<(), String> {
        let op = "crossentropy_backward";
        let n = ce_sizes(op, rows, v, vp)?;
        let region = |id, name| {
            self.store
                .region(id)
                .map_err(|e| format!("{op}: argument `{name}`: {e}"))
        };
        let in_place = region(dlogits, "dlogits")?.same_memory(&region(logits, "logits")?);
        let logits_in = if in_place { None } else { Some(logits) };
        let ins = [
            ("logits", logits_in),
            ("lse", Some(lse)),
            ("targets", Some(targets)),
            ("dlosses", Some(dlosses)),
        ];
        self.exec(op, &[("dlogits", Some(dlogits))], &ins, |o| {
            let lse = o.f32("lse", rows)?;
            let targets = o.u32("targets", rows)?;
            let dlosses = o.f32("dlosses", rows)?;
            let x = if in_place {
                None
            } else {
                Some(o.widened("logits", n)?)
            };
            let mut d = o.float_mut("dlogits", n)?;
            match x {
                Some(x) => ops::crossentropy::backward(d.f32(), &x, lse, targets, dlosses, v, vp),
                None => ops::crossentropy::backward_in_place(d.f32(), lse, targets, dlosses, v, vp),
            }
            d.finish();
            Ok(())
        })
    }

    pub(super) fn softmax_forward_impl(
        &mut self,
        out: BufId,
        lse: ROption<BufId>,
        inp: BufId,
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        let op = "softmax_forward";
        let rc = product(op, "rows*cols", &[rows, cols])?;
        let outs = [("out", Some(out)), ("lse", lse.into_option())];
        self.exec(op, &outs, &[("inp", Some(inp))], |o| {
            let inp = o.widened("inp", rc)?;
            let out = o.f32_mut("out", rc)?;
            let lse = o.f32_mut_opt("lse", rows)?;
            if rc > 0 {
                ops::softmax::forward(out, lse, &inp, cols);
            }
            Ok(())
        })
    }

    pub(super) fn softmax_backward_impl(
        &mut self,
        dinp: BufId,
        out: BufId,
        dout: BufId,
        dlse: ROption<BufId>,
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        let op = "softmax_backward";
        let rc = product(op, "rows*cols", &[rows, cols])?;
        let ins = [
            ("out", Some(out)),
            ("dout", Some(dout)),
            ("dlse", dlse.into_option()),
        ];
        self.exec(op, &[("dinp", Some(dinp))], &ins, |o| {
            let y = o.f32("out", rc)?;
            let g = o.widened("dout", rc)?;
            let dlse = o.f32_opt("dlse", rows)?;
            let mut d = o.float_mut("dinp", rc)?;
            if rc > 0 {
                ops::softmax::backward(d.f32(), y, &g, dlse, cols);
            }
            d.finish();
            Ok(())
        })
    }
}
