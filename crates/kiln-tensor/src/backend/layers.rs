//! Embedding, matmul, bias gradient, LayerNorm/RMSNorm and RoPE.

use std::borrow::Cow;

use kiln_abi::{
    BufId, DType, EmbeddingArgs, EmbeddingBackwardArgs, Epilogue, MatmulArgs, NormArgs,
    NormBackwardArgs, NormKind, RopeArgs,
};

use super::CpuBackend;
use crate::ops::{self, encoder::Positions, matmul::span};
use crate::validate::{
    check_indices, ensure, product, round_to, rows_of, scratch, FloatIn, Operands,
};

/// Checks the position rows an embedding or RoPE reads: given positions must
/// index the table, `pos0 + T` must not pass its end.
fn check_positions(
    o: &Operands<'_>,
    table: &str,
    rows: usize,
    positions: Option<&[u32]>,
    pos0: usize,
    t: usize,
) -> Result<(), String> {
    let op = o.op();
    match positions {
        Some(p) => check_indices(
            op,
            "position",
            table,
            p,
            rows,
            "positions must be below the context length",
        ),
        None => ensure(pos0.checked_add(t).is_some_and(|e| e <= rows), op, || {
            format!(
                "positions pos0 + T = {pos0} + {t} pass the end of `{table}` ({rows} rows); \
                 positions must be below the context length"
            )
        }),
    }
}

impl CpuBackend {
    pub(super) fn embedding_forward_impl(&mut self, a: EmbeddingArgs) -> Result<(), String> {
        let op = "embedding_forward";
        let (b, t, c) = (a.b, a.t, a.c);
        let bt = product(op, "B*T", &[b, t])?;
        let btc = product(op, "B*T*C", &[bt, c])?;
        let ins = [
            ("tokens", Some(a.tokens)),
            ("wte", Some(a.wte)),
            ("wpe", a.wpe.into_option()),
            ("positions", a.positions.into_option()),
        ];
        self.exec(op, &[("out", Some(a.out))], &ins, |o| {
            let tokens = o.u32("tokens", bt)?;
            let positions = o.u32_opt("positions", bt)?;
            let mut out = o.float_mut("out", btc)?;
            if btc == 0 {
                return Ok(());
            }
            let wte_rows = rows_of(o.len("wte"), c);
            check_indices(
                op,
                "token",
                "wte",
                tokens,
                wte_rows,
                "check the vocabulary size",
            )?;
            let wte = o.widened("wte", wte_rows * c)?;
            let wpe = if o.has("wpe") {
                let rows = rows_of(o.len("wpe"), c);
                check_positions(o, "wpe", rows, positions, a.pos0, t)?;
                Some(o.widened("wpe", rows * c)?)
            } else {
                None
            };
            let pos = positions.map_or(Positions::From(a.pos0), Positions::Given);
            ops::encoder::forward(out.f32(), tokens, &wte, wpe.as_deref(), pos, t, c);
            out.finish();
            Ok(())
        })
    }

    pub(super) fn embedding_backward_impl(
        &mut self,
        a: EmbeddingBackwardArgs,
    ) -> Result<(), String> {
        let op = "embedding_backward";
        let (b, t, c) = (a.b, a.t, a.c);
        let bt = product(op, "B*T", &[b, t])?;
        let btc = product(op, "B*T*C", &[bt, c])?;
        let outs = [
            ("dwte", a.dwte.into_option()),
            ("dwpe", a.dwpe.into_option()),
        ];
        let ins = [
            ("dout", Some(a.dout)),
            ("tokens", Some(a.tokens)),
            ("positions", a.positions.into_option()),
        ];
        self.exec(op, &outs, &ins, |o| {
            let dout = o.widened("dout", btc)?;
            let tokens = o.u32("tokens", bt)?;
            let positions = o.u32_opt("positions", bt)?;
            if btc == 0 {
                return Ok(());
            }
            if o.has("dwte") {
                let rows = rows_of(o.len("dwte"), c);
                check_indices(
                    op,
                    "token",
                    "dwte",
                    tokens,
                    rows,
                    "check the vocabulary size",
                )?;
                let mut dwte = o.float_mut("dwte", rows * c)?;
                ops::encoder::backward_tokens(dwte.f32(), &dout, tokens, c);
                dwte.finish();
            }
            if o.has("dwpe") {
                let rows = rows_of(o.len("dwpe"), c);
                check_positions(o, "dwpe", rows, positions, a.pos0, t)?;
                let mut dwpe = o.float_mut("dwpe", rows * c)?;
                let pos = positions.map_or(Positions::From(a.pos0), Positions::Given);
                ops::encoder::backward_positions(dwpe.f32(), &dout, pos, b, t, c);
                dwpe.finish();
            }
            Ok(())
        })
    }

    pub(super) fn matmul_impl(&mut self, a: MatmulArgs) -> Result<(), String> {
        let op = "matmul";
        product(op, "m*n*k", &[a.m, a.n, a.k])?;
        // Leading dimensions: 0 means packed; never shorter than a row.
        let ld = |given: usize, row: usize, name: &str| -> Result<usize, String> {
            let ld = if given == 0 { row } else { given };
            ensure(ld >= row, op, || {
                format!("{name} = {given} is shorter than a row of {row} elements; pass 0 (packed) or >= {row}")
            })?;
            Ok(ld)
        };
        let lda = ld(a.lda, if a.trans_a { a.m } else { a.k }, "lda")?;
        let ldb = ld(a.ldb, if a.trans_b { a.k } else { a.n }, "ldb")?;
        let ldc = ld(a.ldc, a.n, "ldc")?;
        let a_need = if a.trans_a {
            span(a.k, a.m, lda)
        } else {
            span(a.m, a.k, lda)
        };
        let b_need = if a.trans_b {
            span(a.n, a.k, ldb)
        } else {
            span(a.k, a.n, ldb)
        };
        let c_need = span(a.m, a.n, ldc);
        product(
            op,
            "rows*ld",
            &[a.m.max(a.k).max(a.n), lda.max(ldb).max(ldc)],
        )?;
        let gelu = a.epilogue == Epilogue::Gelu;
        if gelu {
            ensure(a.pre_act.is_some(), op, || {
                "the GELU epilogue needs `pre_act` (the pre-activation, for the backward)".into()
            })?;
            ensure(a.beta == 0.0, op, || {
                format!("the GELU epilogue needs beta = 0, got {}", a.beta)
            })?;
        }
        let outs = [
            ("out", Some(a.out)),
            ("pre_act", if gelu { a.pre_act.into_option() } else { None }),
        ];
        let ins = [
            ("a", Some(a.a)),
            ("b", Some(a.b)),
            ("bias", a.bias.into_option()),
        ];
        let engine = self.engine;
        let dims = ops::matmul::Dims {
            m: a.m,
            n: a.n,
            k: a.k,
            trans_a: a.trans_a,
            trans_b: a.trans_b,
            lda,
            ldb,
            ldc,
            alpha: a.alpha,
            beta: a.beta,
        };
        let bf16_gemm = self.bf16_gemm;
        self.exec(op, &outs, &ins, |o| {
            // Both operands bf16 on an AVX512-BF16 CPU: the native kernel
            // reads them as they are; otherwise widen to f32.
            let native = bf16_gemm && o.dtype("a") == DType::BF16 && o.dtype("b") == DType::BF16;
            let operands = if native {
                match (o.float("a", a_need)?, o.float("b", b_need)?) {
                    (FloatIn::BF16(l), FloatIn::BF16(r)) => ops::matmul::Operands::Bf16(l, r),
                    _ => unreachable!("dtypes checked above"),
                }
            } else {
                ops::matmul::Operands::F32(o.widened("a", a_need)?, o.widened("b", b_need)?)
            };
            let bias = o.widened_opt("bias", a.n)?;
            // beta = 0 over a packed output writes every element unread.
            let mut out = if a.beta == 0.0 && ldc == a.n {
                o.float_mut_overwrite("out", c_need)?
            } else {
                o.float_mut("out", c_need)?
            };
            if gelu {
                let mut pre = if ldc == a.n {
                    o.float_mut_overwrite("pre_act", c_need)?
                } else {
                    o.float_mut("pre_act", c_need)?
                };
                ops::matmul::forward(engine, pre.f32(), &operands, bias.as_deref(), dims);
                ops::matmul::gelu_epilogue(out.f32(), pre.f32(), dims);
                pre.finish();
            } else {
                ops::matmul::forward(engine, out.f32(), &operands, bias.as_deref(), dims);
            }
            out.finish();
            Ok(())
        })
    }

    pub(super) fn bias_backward_impl(
        &mut self,
        dbias: BufId,
        dout: BufId,
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        let op = "bias_backward";
        let rc = product(op, "rows*cols", &[rows, cols])?;
        self.exec(
            op,
            &[("dbias", Some(dbias))],
            &[("dout", Some(dout))],
            |o| {
                let dout = o.widened("dout", rc)?;
                let mut db = o.float_mut("dbias", cols)?;
                ops::matmul::bias_backward(db.f32(), &dout, rows, cols);
                db.finish();
                Ok(())
            },
        )
    }

    pub(super) fn norm_forward_impl(&mut self, a: NormArgs) -> Result<(), String> {
        let op = "norm_forward";
        let (rows, cols) = (a.rows, a.cols);
        let rc = product(op, "rows*cols", &[rows, cols])?;
        ensure(cols > 0 || rows == 0, op, || "cols must be positive".into())?;
        ensure(a.eps >= 0.0 && a.eps.is_finite(), op, || {
            format!("eps must be finite and >= 0, got {}", a.eps)
        })?;
        let ln = a.kind == NormKind::LayerNorm;
        if ln {
            ensure(a.mean.is_some(), op, || {
                "LayerNorm needs `mean` (f32 [rows])".into()
            })?;
        } else {
            ensure(a.mean.is_none() && a.bias.is_none(), op, || {
                "RMSNorm has no `mean` or `bias`; pass None".into()
            })?;
        }
        ensure(a.residual.is_some() == a.residual_out.is_some(), op, || {
            "`residual` and `residual_out` go together (the fused residual add writes residual_out = inp + residual)".into()
        })?;
        let outs = [
            ("out", Some(a.out)),
            ("mean", a.mean.into_option()),
            ("rstd", Some(a.rstd)),
            ("residual_out", a.residual_out.into_option()),
        ];
        let ins = [
            ("inp", Some(a.inp)),
            ("weight", Some(a.weight)),
            ("bias", a.bias.into_option()),
            ("residual", a.residual.into_option()),
        ];
        self.exec(op, &outs, &ins, |o| {
            let inp = o.widened("inp", rc)?;
            let weight = o.widened("weight", cols)?;
            let bias = match o.widened_opt("bias", cols)? {
                Some(b) => b,
                None => Cow::Owned(vec![0f32; cols]),
            };
            let mut out = o.float_mut("out", rc)?;
            let rstd = o.f32_mut("rstd", rows)?;
            let mean = o.f32_mut_opt("mean", rows)?;
            // Fused residual: normalise what residual_out stores (rounded).
            let mut res_out = o.float_mut_opt("residual_out", rc)?;
            let x: &[f32] = match &mut res_out {
                Some(ro) => {
                    let residual = o.widened("residual", rc)?;
                    ops::elementwise::add(ro.f32(), &inp, &residual);
                    round_to(o.dtype("residual_out"), ro.f32());
                    ro.f32()
                }
                None => &inp,
            };
            if rows > 0 {
                match mean {
                    Some(mean) => ops::layernorm::forward(
                        out.f32(),
                        mean,
                        rstd,
                        x,
                        &weight,
                        &bias,
                        cols,
                        a.eps,
                    ),
                    None => ops::rmsnorm::forward(out.f32(), rstd, x, &weight, cols, a.eps),
                }
            }
            out.finish();
            if let Some(ro) = res_out {
                ro.finish();
            }
            Ok(())
        })
    }

    pub(super) fn norm_backward_impl(&mut self, a: NormBackwardArgs) -> Result<(), String> {
        let op = "norm_backward";
        let (rows, cols) = (a.rows, a.cols);
        let rc = product(op, "rows*cols", &[rows, cols])?;
        let ln = a.kind == NormKind::LayerNorm;
        if ln {
            ensure(a.mean.is_some(), op, || {
                "LayerNorm needs `mean` (f32 [rows])".into()
            })?;
        } else {
            ensure(a.mean.is_none() && a.dbias.is_none(), op, || {
                "RMSNorm has no `mean` or `dbias`; pass None".into()
            })?;
        }
        let outs = [
            ("dinp", Some(a.dinp)),
            ("dweight", a.dweight.into_option()),
            ("dbias", a.dbias.into_option()),
        ];
        let ins = [
            ("dout", Some(a.dout)),
            ("inp", Some(a.inp)),
            ("weight", Some(a.weight)),
            ("mean", a.mean.into_option()),
            ("rstd", Some(a.rstd)),
        ];
        self.exec(op, &outs, &ins, |o| {
            let dout = o.widened("dout", rc)?;
            let inp = o.widened("inp", rc)?;
            let weight = o.widened("weight", cols)?;
            let mean = o.f32_opt("mean", rows)?;
            let rstd = o.f32("rstd", rows)?;
            let mut dinp = o.float_mut("dinp", rc)?;
            let mut dw = o.float_mut_opt("dweight", cols)?;
            let mut db = o.float_mut_opt("dbias", cols)?;
            if rows > 0 && cols > 0 {
                // An absent gradient is computed into scratch and dropped.
                let mut dw_scratch: Vec<f32>;
                let dw_s: &mut [f32] = match &mut dw {
                    Some(d) => d.f32(),
                    None => {
                        dw_scratch = scratch(op, cols)?;
                        &mut dw_scratch
                    }
                };
                match mean {
                    Some(mean) => {
                        let mut db_scratch: Vec<f32>;
                        let db_s: &mut [f32] = match &mut db {
                            Some(d) => d.f32(),
                            None => {
                                db_scratch = scratch(op, cols)?;
                                &mut db_scratch
                            }
                        };
                        ops::layernorm::backward(
                            dinp.f32(),
                            dw_s,
                            db_s,
                            &dout,
                            &inp,
                            &weight,
                            mean,
                            rstd,
                            cols,
                        )
                    }
                    None => {
                        ops::rmsnorm::backward(dinp.f32(), dw_s, &dout, &inp, &weight, rstd, cols)
                    }
                }
            }
            dinp.finish();
            for d in [dw, db].into_iter().flatten() {
                d.finish();
            }
            Ok(())
        })
    }

    pub(super) fn rope_impl(&mut self, a: RopeArgs) -> Result<(), String> {
        let op = "rope";
        let bt = product(op, "B*T", &[a.b, a.t])?;
        let n = product(op, "B*T*row_width", &[bt, a.row_width])?;
        let hd = a.head_dim;
        ensure(hd > 0 && hd.is_multiple_of(2), op, || {
            format!("head_dim must be even and positive, got {hd}")
        })?;
        let heads_end =
            product(op, "n_heads*head_dim", &[a.n_heads, hd])?.checked_add(a.col_offset);
        ensure(heads_end.is_some_and(|e| e <= a.row_width), op, || {
            format!(
                "col_offset + n_heads*head_dim = {} + {}*{hd} passes row_width = {}",
                a.col_offset, a.n_heads, a.row_width
            )
        })?;
        let half = hd / 2;
        let ins = [
            ("cos", Some(a.cos)),
            ("sin", Some(a.sin)),
            ("positions", a.positions.into_option()),
        ];
        self.exec(op, &[("buf", Some(a.buf))], &ins, |o| {
            let positions = o.u32_opt("positions", bt)?;
            let (rows_cos, rows_sin) = (rows_of(o.len("cos"), half), rows_of(o.len("sin"), half));
            let rows = rows_cos.min(rows_sin);
            let (cos, sin) = (o.f32("cos", rows * half)?, o.f32("sin", rows * half)?);
            let mut buf = o.float_mut("buf", n)?;
            if n == 0 || a.n_heads == 0 {
                return Ok(());
            }
            check_positions(o, "cos", rows_cos, positions, a.pos0, a.t)?;
            check_positions(o, "sin", rows_sin, positions, a.pos0, a.t)?;
            let pos = positions.map_or(Positions::From(a.pos0), Positions::Given);
            let layout = ops::rope::Layout {
                t: a.t,
                row_width: a.row_width,
                col_offset: a.col_offset,
                n_heads: a.n_heads,
                head_dim: hd,
                inverse: a.inverse,
            };
            ops::rope::apply(buf.f32(), cos, sin, pos, layout);
            buf.finish();
            Ok(())
        })
    }
}
