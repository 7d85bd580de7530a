//! Elementwise ops, reductions and the step's control values.

use kiln_abi::stats::{
    step_control_reference, STAT_GRAD_FACTOR, STAT_GRAD_NORM, STAT_GRAD_SUMSQ, STAT_LOSS,
    STAT_SKIP, STAT_SLOTS,
};
use kiln_abi::{BufId, Reduce, Unary};

use super::CpuBackend;
use crate::ops::{self, activation::Kind};
use crate::validate::{ensure, product};

impl CpuBackend {
    pub(super) fn scale_impl(&mut self, id: BufId, n: usize, factor: f32) -> Result<(), String> {
        self.exec("scale", &[("buf", Some(id))], &[], |o| {
            let mut buf = o.float_mut("buf", n)?;
            ops::elementwise::scale(buf.f32(), factor);
            buf.finish();
            Ok(())
        })
    }

    pub(super) fn add_impl(
        &mut self,
        out: BufId,
        a: BufId,
        b: BufId,
        n: usize,
    ) -> Result<(), String> {
        let ins = [("a", Some(a)), ("b", Some(b))];
        self.exec("add", &[("out", Some(out))], &ins, |o| {
            let (a, b) = (o.widened("a", n)?, o.widened("b", n)?);
            let mut out = o.float_mut("out", n)?;
            ops::elementwise::add(out.f32(), &a, &b);
            out.finish();
            Ok(())
        })
    }

    pub(super) fn axpy_impl(
        &mut self,
        dst: BufId,
        src: BufId,
        n: usize,
        alpha: f32,
    ) -> Result<(), String> {
        self.exec("axpy", &[("dst", Some(dst))], &[("src", Some(src))], |o| {
            let src = o.widened("src", n)?;
            let mut dst = o.float_mut("dst", n)?;
            ops::elementwise::axpy(dst.f32(), &src, alpha);
            dst.finish();
            Ok(())
        })
    }

    pub(super) fn unary_forward_impl(
        &mut self,
        kind: Unary,
        out: BufId,
        inp: BufId,
        n: usize,
    ) -> Result<(), String> {
        self.exec(
            "unary_forward",
            &[("out", Some(out))],
            &[("inp", Some(inp))],
            |o| {
                let inp = o.widened("inp", n)?;
                let mut out = o.float_mut("out", n)?;
                match kind {
                    Unary::Gelu => ops::gelu::forward(out.f32(), &inp),
                    Unary::Silu => ops::activation::forward(Kind::Silu, out.f32(), &inp),
                    Unary::Sigmoid => ops::activation::forward(Kind::Sigmoid, out.f32(), &inp),
                    Unary::Relu => ops::activation::forward(Kind::Relu, out.f32(), &inp),
                }
                out.finish();
                Ok(())
            },
        )
    }

    pub(super) fn unary_backward_impl(
        &mut self,
        kind: Unary,
        dinp: BufId,
        inp: BufId,
        dout: BufId,
        n: usize,
    ) -> Result<(), String> {
        let ins = [("inp", Some(inp)), ("dout", Some(dout))];
        self.exec("unary_backward", &[("dinp", Some(dinp))], &ins, |o| {
            let (inp, dout) = (o.widened("inp", n)?, o.widened("dout", n)?);
            let mut d = o.float_mut("dinp", n)?;
            match kind {
                Unary::Gelu => ops::gelu::backward(d.f32(), &inp, &dout),
                Unary::Silu => ops::activation::backward(Kind::Silu, d.f32(), &inp, &dout),
                Unary::Sigmoid => ops::activation::backward(Kind::Sigmoid, d.f32(), &inp, &dout),
                Unary::Relu => ops::activation::backward(Kind::Relu, d.f32(), &inp, &dout),
            }
            d.finish();
            Ok(())
        })
    }

    pub(super) fn swiglu_forward_impl(
        &mut self,
        out: BufId,
        inp: BufId,
        rows: usize,
        f: usize,
    ) -> Result<(), String> {
        let op = "swiglu_forward";
        let rf = product(op, "rows*f", &[rows, f])?;
        let rf2 = product(op, "rows*2f", &[rf, 2])?;
        self.exec(op, &[("out", Some(out))], &[("inp", Some(inp))], |o| {
            let inp = o.widened("inp", rf2)?;
            let mut out = o.float_mut("out", rf)?;
            if rf > 0 {
                ops::swiglu::forward(out.f32(), &inp, f);
            }
            out.finish();
            Ok(())
        })
    }

    pub(super) fn swiglu_backward_impl(
        &mut self,
        dinp: BufId,
        inp: BufId,
        dout: BufId,
        rows: usize,
        f: usize,
    ) -> Result<(), String> {
        let op = "swiglu_backward";
        let rf = product(op, "rows*f", &[rows, f])?;
        let rf2 = product(op, "rows*2f", &[rf, 2])?;
        let ins = [("inp", Some(inp)), ("dout", Some(dout))];
        self.exec(op, &[("dinp", Some(dinp))], &ins, |o| {
            let (inp, dout) = (o.widened("inp", rf2)?, o.widened("dout", rf)?);
            let mut d = o.float_mut("dinp", rf2)?;
            if rf > 0 {
                ops::swiglu::backward(d.f32(), &inp, &dout, f);
            }
            d.finish();
            Ok(())
        })
    }

    pub(super) fn reduce_impl(
        &mut self,
        kind: Reduce,
        dst: BufId,
        slot: usize,
        src: BufId,
        n: usize,
    ) -> Result<(), String> {
        let op = "reduce";
        let need = slot
            .checked_add(1)
            .ok_or_else(|| format!("{op}: slot {slot} overflows"))?;
        self.exec(op, &[("dst", Some(dst))], &[("src", Some(src))], |o| {
            let src = o.widened("src", n)?;
            let d = &mut o.f32_mut("dst", need)?[slot];
            match kind {
                // Computed in f64 per call, added in f32 (kiln_abi::Reduce).
                Reduce::Sum => *d += ops::reduce::sum(&src) as f32,
                Reduce::SumSquares => *d += ops::reduce::sum_squares(&src) as f32,
                Reduce::MaxAbs => {
                    let m = ops::reduce::max_abs(&src);
                    *d = if d.is_nan() || m.is_nan() {
                        f32::NAN
                    } else {
                        d.max(m)
                    };
                }
            }
            Ok(())
        })
    }

    pub(super) fn step_control_impl(
        &mut self,
        stats: BufId,
        max_norm: f32,
        inv_loss_scale: f32,
    ) -> Result<(), String> {
        let op = "step_control";
        ensure(
            max_norm.is_finite() && inv_loss_scale.is_finite(),
            op,
            || {
                format!(
                    "max_norm ({max_norm}) and inv_loss_scale ({inv_loss_scale}) must be finite"
                )
            },
        )?;
        self.exec(op, &[("stats", Some(stats))], &[], |o| {
            let s = o.f32_mut("stats", STAT_SLOTS)?;
            let (factor, skip, norm) =
                step_control_reference(s[STAT_LOSS], s[STAT_GRAD_SUMSQ], max_norm, inv_loss_scale);
            s[STAT_GRAD_FACTOR] = factor;
            s[STAT_SKIP] = skip;
            s[STAT_GRAD_NORM] = norm;
            Ok(())
        })
    }
}
