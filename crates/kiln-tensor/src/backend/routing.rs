//! Mixture-of-experts routing and row movement: top-k, renormalisation,
//! gather, weighted scatter-add, row dots and index counts.

use kiln_abi::{BufId, ROption};

use super::CpuBackend;
use crate::ops;
use crate::validate::{check_indices, ensure, product, rows_of};

impl CpuBackend {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn topk_forward_impl(
        &mut self,
        values: BufId,
        indices: BufId,
        scores: BufId,
        bias: ROption<BufId>,
        rows: usize,
        cols: usize,
        k: usize,
    ) -> Result<(), String> {
        let op = "topk_forward";
        ensure(k <= cols, op, || format!("k = {k} exceeds cols = {cols}"))?;
        let rc = product(op, "rows*cols", &[rows, cols])?;
        let rk = product(op, "rows*k", &[rows, k])?;
        let outs = [("values", Some(values)), ("indices", Some(indices))];
        let ins = [("scores", Some(scores)), ("bias", bias.into_option())];
        self.exec(op, &outs, &ins, |o| {
            let s = o.f32("scores", rc)?;
            let b = o.f32_opt("bias", cols)?;
            let (v, i) = (o.f32_mut("values", rk)?, o.u32_mut("indices", rk)?);
            if rk > 0 {
                ops::routing::topk_forward(v, i, s, b, cols, k);
            }
            Ok(())
        })
    }

    pub(super) fn topk_backward_impl(
        &mut self,
        dscores: BufId,
        dvalues: BufId,
        indices: BufId,
        rows: usize,
        cols: usize,
        k: usize,
    ) -> Result<(), String> {
        let op = "topk_backward";
        let rc = product(op, "rows*cols", &[rows, cols])?;
        let rk = product(op, "rows*k", &[rows, k])?;
        let ins = [("dvalues", Some(dvalues)), ("indices", Some(indices))];
        self.exec(op, &[("dscores", Some(dscores))], &ins, |o| {
            let dv = o.f32("dvalues", rk)?;
            let idx = o.u32("indices", rk)?;
            check_indices(
                op,
                "index",
                "dscores",
                idx,
                cols,
                "indices must be below cols",
            )?;
            let d = o.f32_mut("dscores", rc)?;
            if rk > 0 {
                ops::routing::topk_backward(d, dv, idx, cols, k);
            }
            Ok(())
        })
    }

    pub(super) fn normalize_rows_forward_impl(
        &mut self,
        out: BufId,
        inp: BufId,
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        let op = "normalize_rows_forward";
        let rc = product(op, "rows*cols", &[rows, cols])?;
        self.exec(op, &[("out", Some(out))], &[("inp", Some(inp))], |o| {
            let x = o.f32("inp", rc)?;
            let y = o.f32_mut("out", rc)?;
            if rc > 0 {
                ops::routing::normalize_forward(y, x, cols);
            }
            Ok(())
        })
    }

    pub(super) fn normalize_rows_backward_impl(
        &mut self,
        dinp: BufId,
        inp: BufId,
        out: BufId,
        dout: BufId,
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        let op = "normalize_rows_backward";
        let rc = product(op, "rows*cols", &[rows, cols])?;
        let ins = [("inp", Some(inp)), ("out", Some(out)), ("dout", Some(dout))];
        self.exec(op, &[("dinp", Some(dinp))], &ins, |o| {
            let (x, y, g) = (o.f32("inp", rc)?, o.f32("out", rc)?, o.f32("dout", rc)?);
            let d = o.f32_mut("dinp", rc)?;
            if rc > 0 {
                ops::routing::normalize_backward(d, x, y, g, cols);
            }
            Ok(())
        })
    }

    pub(super) fn gather_rows_impl(
        &mut self,
        out: BufId,
        src: BufId,
        indices: BufId,
        n: usize,
        cols: usize,
    ) -> Result<(), String> {
        let op = "gather_rows";
        let nc = product(op, "n*cols", &[n, cols])?;
        let ins = [("src", Some(src)), ("indices", Some(indices))];
        self.exec(op, &[("out", Some(out))], &ins, |o| {
            let idx = o.u32("indices", n)?;
            let mut y = o.float_mut("out", nc)?;
            if nc == 0 {
                return Ok(());
            }
            let rows = rows_of(o.len("src"), cols);
            check_indices(
                op,
                "index",
                "src",
                idx,
                rows,
                "indices must be below the rows of src",
            )?;
            let s = o.widened("src", rows * cols)?;
            ops::rows::gather(y.f32(), &s, idx, cols);
            y.finish();
            Ok(())
        })
    }

    pub(super) fn scatter_add_rows_impl(
        &mut self,
        dst: BufId,
        src: BufId,
        indices: BufId,
        weights: ROption<BufId>,
        n: usize,
        cols: usize,
    ) -> Result<(), String> {
        let op = "scatter_add_rows";
        let nc = product(op, "n*cols", &[n, cols])?;
        let ins = [
            ("src", Some(src)),
            ("indices", Some(indices)),
            ("weights", weights.into_option()),
        ];
        self.exec(op, &[("dst", Some(dst))], &ins, |o| {
            let s = o.widened("src", nc)?;
            let idx = o.u32("indices", n)?;
            let w = o.f32_opt("weights", n)?;
            if nc == 0 {
                return Ok(());
            }
            let rows = rows_of(o.len("dst"), cols);
            check_indices(
                op,
                "index",
                "dst",
                idx,
                rows,
                "indices must be below the rows of dst",
            )?;
            let mut d = o.float_mut("dst", rows * cols)?;
            ops::encoder::scatter_rows_weighted(d.f32(), &s, idx, w, cols);
            d.finish();
            Ok(())
        })
    }

    pub(super) fn rows_dot_impl(
        &mut self,
        out: BufId,
        a: BufId,
        a_indices: ROption<BufId>,
        b: BufId,
        n: usize,
        cols: usize,
    ) -> Result<(), String> {
        let op = "rows_dot";
        let nc = product(op, "n*cols", &[n, cols])?;
        let ins = [
            ("a", Some(a)),
            ("a_indices", a_indices.into_option()),
            ("b", Some(b)),
        ];
        self.exec(op, &[("out", Some(out))], &ins, |o| {
            let bv = o.widened("b", nc)?;
            let idx = o.u32_opt("a_indices", n)?;
            let y = o.f32_mut("out", n)?;
            if nc == 0 {
                return Ok(());
            }
            let a_rows = match idx {
                Some(idx) => {
                    let rows = rows_of(o.len("a"), cols);
                    check_indices(
                        op,
                        "index",
                        "a",
                        idx,
                        rows,
                        "a_indices must be below the rows of a",
                    )?;
                    rows
                }
                None => n,
            };
            let av = o.widened("a", a_rows * cols)?;
            ops::rows::rows_dot(y, &av, idx, &bv, cols);
            Ok(())
        })
    }

    pub(super) fn index_counts_impl(
        &mut self,
        counts: BufId,
        indices: BufId,
        n: usize,
        e: usize,
    ) -> Result<(), String> {
        let op = "index_counts";
        self.exec(
            op,
            &[("counts", Some(counts))],
            &[("indices", Some(indices))],
            |o| {
                let idx = o.u32("indices", n)?;
                check_indices(op, "index", "counts", idx, e, "indices must be below e")?;
                ops::rows::index_counts(o.f32_mut("counts", e)?, idx);
                Ok(())
            },
        )
    }
}
