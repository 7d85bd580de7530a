//! [`CpuBackend`]: the built-in implementation of [`kiln_abi::Backend`].

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use abi_stable::std_types::{RResult, RSlice, RSliceMut, RString, RVec};
use half::{bf16, f16, slice::HalfFloatSliceExt};
use kiln_abi::{
    guard::guard, AdamWArgs, Backend, BackendInfo, BufId, BufInfoPair, DType, MatmulArgs,
};

use crate::gemm::GemmEngine;
use crate::ops;
use crate::store::{Buffer, Store};
use crate::validate::{ensure, product, FloatSlice, Inputs, Output};

/// The CPU backend: host buffers plus a dedicated rayon pool.
///
/// Determinism: every op gives bit-identical results for the same inputs,
/// run after run, and for any thread count (work is split at shape-determined
/// boundaries and partial results are combined in a fixed order).
pub struct CpuBackend {
    store: Store,
    pool: rayon::ThreadPool,
    threads: usize,
    engine: GemmEngine,
}

impl CpuBackend {
    /// A backend with `threads` worker threads (`None` or `Some(0)`: one per
    /// available core).
    pub fn new(threads: Option<usize>) -> CpuBackend {
        CpuBackend::with_engine(threads, GemmEngine::Gemm)
    }

    /// As [`CpuBackend::new`], choosing the GEMM micro-kernel library.
    pub fn with_engine(threads: Option<usize>, engine: GemmEngine) -> CpuBackend {
        let threads = threads.filter(|&n| n > 0).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kiln-cpu-{i}"))
            .build()
            .expect("kiln-tensor: cannot start the CPU backend's worker threads");
        CpuBackend {
            store: Store::default(),
            pool,
            threads,
            engine,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Number of live buffers (for leak checks in tests).
    pub fn live_buffers(&self) -> usize {
        self.store.len()
    }

    /// Runs `f` with the `outs` buffers taken out of the store (so they can
    /// be borrowed mutably next to the inputs) and puts them back afterwards,
    /// also when `f` fails or panics. Outputs may not alias any other argument.
    fn with_outputs<R: Send>(
        &mut self,
        op: &'static str,
        outs: &[(&'static str, BufId)],
        ins: &[(&'static str, BufId)],
        f: impl FnOnce(Inputs<'_>, &mut [Output]) -> Result<R, String> + Send,
    ) -> Result<R, String> {
        for (i, &(name, id)) in outs.iter().enumerate() {
            let others = outs[i + 1..].iter().chain(ins);
            if let Some(&(other, _)) = others.into_iter().find(|(_, o)| *o == id) {
                return Err(format!(
                    "{op}: `{name}` and `{other}` are the same buffer {}; an output must not alias another argument",
                    id.0
                ));
            }
            self.store
                .get(id)
                .map_err(|e| format!("{op}: argument `{name}`: {e}"))?;
        }
        let mut taken: Vec<Output> = outs
            .iter()
            .map(|&(name, id)| Output {
                name,
                id,
                buf: self.store.remove(id).expect("checked above"),
            })
            .collect();
        let inputs = Inputs {
            op,
            store: &self.store,
        };
        let pool = &self.pool;
        let result = catch_unwind(AssertUnwindSafe(|| pool.install(|| f(inputs, &mut taken))));
        for o in taken {
            self.store.restore(o.id, o.buf);
        }
        match result {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        }
    }

    // ---- buffers -----------------------------------------------------------

    fn alloc_impl(&mut self, dtype: DType, len: usize) -> Result<BufId, String> {
        product("alloc", "bytes", &[len, dtype.size()])?;
        let buf = Buffer::zeros(dtype, len).map_err(|e| format!("alloc: {e}"))?;
        Ok(self.store.insert(buf))
    }

    fn upload_impl(&mut self, id: BufId, bytes: &[u8]) -> Result<(), String> {
        let buf = self.store.get_mut(id).map_err(|e| format!("upload: {e}"))?;
        let want = buf.len() * buf.dtype().size();
        ensure(bytes.len() == want, "upload", || {
            format!(
                "buffer {} is {} {} elements = {want} bytes, got {} bytes",
                id.0,
                buf.len(),
                buf.dtype(),
                bytes.len()
            )
        })?;
        buf.bytes_mut().copy_from_slice(bytes);
        Ok(())
    }

    fn download_impl(&mut self, id: BufId, out: &mut [u8]) -> Result<(), String> {
        let buf = self.store.get(id).map_err(|e| format!("download: {e}"))?;
        let want = buf.len() * buf.dtype().size();
        ensure(out.len() == want, "download", || {
            format!(
                "buffer {} is {} {} elements = {want} bytes, the destination holds {} bytes",
                id.0,
                buf.len(),
                buf.dtype(),
                out.len()
            )
        })?;
        out.copy_from_slice(buf.bytes());
        Ok(())
    }

    // ---- elementwise -------------------------------------------------------

    fn zero_impl(&mut self, id: BufId) -> Result<(), String> {
        let buf = self.store.get_mut(id).map_err(|e| format!("zero: {e}"))?;
        match buf {
            Buffer::F32(v) => v.fill(0.0),
            Buffer::BF16(v) => v.fill(bf16::ZERO),
            Buffer::F16(v) => v.fill(f16::ZERO),
            Buffer::U32(v) => v.fill(0),
        }
        Ok(())
    }

    fn copy_impl(&mut self, dst: BufId, src: BufId, n: usize) -> Result<(), String> {
        let op = "copy";
        self.with_outputs(op, &[("dst", dst)], &[("src", src)], |ins, outs| {
            let src = ins.any("src", src, n)?;
            let out = &mut outs[0];
            ensure(out.buf.dtype() == src.dtype(), op, || {
                format!(
                    "`dst` (buffer {}) is {} but `src` is {}; use cast to convert",
                    dst.0,
                    out.buf.dtype(),
                    src.dtype()
                )
            })?;
            ensure(out.buf.len() >= n, op, || {
                format!(
                    "`dst` (buffer {}) holds {} elements, needs {n}",
                    dst.0,
                    out.buf.len()
                )
            })?;
            let size = src.dtype().size();
            out.buf.bytes_mut()[..n * size].copy_from_slice(&src.bytes()[..n * size]);
            Ok(())
        })
    }

    fn cast_impl(&mut self, dst: BufId, src: BufId, n: usize) -> Result<(), String> {
        let op = "cast";
        self.with_outputs(op, &[("dst", dst)], &[("src", src)], |ins, outs| {
            let src = ins.float("src", src, n)?;
            let out = &mut outs[0];
            ensure(out.buf.len() >= n, op, || {
                format!(
                    "`dst` (buffer {}) holds {} elements, needs {n}",
                    dst.0,
                    out.buf.len()
                )
            })?;
            // Widening to f32 is exact; narrowing rounds to nearest even (half).
            match (&mut out.buf, src) {
                (Buffer::F32(d), FloatSlice::F32(s)) => d[..n].copy_from_slice(s),
                (Buffer::F32(d), FloatSlice::BF16(s)) => s.convert_to_f32_slice(&mut d[..n]),
                (Buffer::F32(d), FloatSlice::F16(s)) => s.convert_to_f32_slice(&mut d[..n]),
                (Buffer::BF16(d), FloatSlice::F32(s)) => d[..n].convert_from_f32_slice(s),
                (Buffer::F16(d), FloatSlice::F32(s)) => d[..n].convert_from_f32_slice(s),
                (Buffer::BF16(d), FloatSlice::BF16(s)) => d[..n].copy_from_slice(s),
                (Buffer::F16(d), FloatSlice::F16(s)) => d[..n].copy_from_slice(s),
                (Buffer::BF16(d), FloatSlice::F16(s)) => {
                    for (d, s) in d[..n].iter_mut().zip(s) {
                        *d = bf16::from_f32(s.to_f32());
                    }
                }
                (Buffer::F16(d), FloatSlice::BF16(s)) => {
                    for (d, s) in d[..n].iter_mut().zip(s) {
                        *d = f16::from_f32(s.to_f32());
                    }
                }
                (Buffer::U32(_), _) => {
                    return Err(format!(
                        "{op}: `dst` (buffer {}) is u32; cast converts between float types only",
                        dst.0
                    ))
                }
            }
            Ok(())
        })
    }

    fn scale_impl(&mut self, id: BufId, n: usize, factor: f32) -> Result<(), String> {
        self.with_outputs("scale", &[("buf", id)], &[], |_, outs| {
            ops::elementwise::scale(outs[0].f32("scale", n)?, factor);
            Ok(())
        })
    }

    fn add_impl(&mut self, out: BufId, a: BufId, b: BufId, n: usize) -> Result<(), String> {
        let op = "add";
        self.with_outputs(op, &[("out", out)], &[("a", a), ("b", b)], |ins, outs| {
            let (a, b) = (ins.f32("a", a, n)?, ins.f32("b", b, n)?);
            ops::elementwise::add(outs[0].f32(op, n)?, a, b);
            Ok(())
        })
    }

    fn accumulate_impl(&mut self, dst: BufId, src: BufId, n: usize) -> Result<(), String> {
        let op = "accumulate";
        self.with_outputs(op, &[("dst", dst)], &[("src", src)], |ins, outs| {
            let src = ins.f32("src", src, n)?;
            ops::elementwise::accumulate(outs[0].f32(op, n)?, src);
            Ok(())
        })
    }

    fn sum_squares_impl(&mut self, id: BufId, n: usize) -> Result<f64, String> {
        self.with_outputs("sum_squares", &[], &[("buf", id)], |ins, _| {
            Ok(ops::elementwise::sum_squares(ins.f32("buf", id, n)?))
        })
    }

    // ---- layers ------------------------------------------------------------

    /// `encoder_forward` (`pos0 == 0`) and `encoder_forward_at` (`op` names
    /// the one called, for messages).
    #[allow(clippy::too_many_arguments)]
    fn encoder_forward_impl(
        &mut self,
        op: &'static str,
        out: BufId,
        tokens: BufId,
        wte: BufId,
        wpe: BufId,
        b: usize,
        t: usize,
        c: usize,
        pos0: usize,
    ) -> Result<(), String> {
        let bt = product(op, "B*T", &[b, t])?;
        let btc = product(op, "B*T*C", &[bt, c])?;
        // wpe rows pos0..pos0+T are read: the buffer must hold (pos0+T)*C.
        let end = pos0
            .checked_add(t)
            .ok_or_else(|| format!("{op}: pos0 + T overflows"))?;
        let wpe_len = product(op, "(pos0+T)*C", &[end, c])?;
        self.with_outputs(
            op,
            &[("out", out)],
            &[("tokens", tokens), ("wte", wte), ("wpe", wpe)],
            |ins, outs| {
                let tokens = ins.u32("tokens", tokens, bt)?;
                let wte = ins.f32_whole("wte", wte)?;
                let wpe = ins.f32("wpe", wpe, wpe_len)?;
                check_tokens(op, "wte", tokens, wte.len(), c)?;
                let wte = &wte[..rows_of(wte.len(), c) * c];
                let wpe = &wpe[pos0 * c..wpe_len];
                ops::encoder::forward(outs[0].f32(op, btc)?, tokens, wte, wpe, t, c);
                Ok(())
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn encoder_backward_impl(
        &mut self,
        dwte: BufId,
        dwpe: BufId,
        dout: BufId,
        tokens: BufId,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<(), String> {
        let op = "encoder_backward";
        let bt = product(op, "B*T", &[b, t])?;
        let btc = product(op, "B*T*C", &[bt, c])?;
        let tc = product(op, "T*C", &[t, c])?;
        self.with_outputs(
            op,
            &[("dwte", dwte), ("dwpe", dwpe)],
            &[("dout", dout), ("tokens", tokens)],
            |ins, outs| {
                let dout = ins.f32("dout", dout, btc)?;
                let tokens = ins.u32("tokens", tokens, bt)?;
                let [o_wte, o_wpe] = outs else { unreachable!() };
                let dwte = o_wte.f32_whole(op)?;
                check_tokens(op, "dwte", tokens, dwte.len(), c)?;
                let dwte_len = rows_of(dwte.len(), c) * c;
                let dwpe = o_wpe.f32(op, tc)?;
                if bt > 0 && c > 0 {
                    ops::encoder::backward(&mut dwte[..dwte_len], dwpe, dout, tokens, b, t, c);
                }
                Ok(())
            },
        )
    }

    fn matmul_impl(&mut self, a: MatmulArgs) -> Result<(), String> {
        let op = "matmul";
        let mn = product(op, "m*n", &[a.m, a.n])?;
        let mk = product(op, "m*k", &[a.m, a.k])?;
        let kn = product(op, "k*n", &[a.k, a.n])?;
        let mut ins = vec![("a", a.a), ("b", a.b)];
        if let Some(bias) = a.bias.into_option() {
            ins.push(("bias", bias));
        }
        let engine = self.engine;
        self.with_outputs(op, &[("out", a.out)], &ins, |inp, outs| {
            let lhs = widen(inp.float("a", a.a, mk)?);
            let rhs = widen(inp.float("b", a.b, kn)?);
            let bias = match a.bias.into_option() {
                Some(id) => Some(inp.f32("bias", id, a.n)?),
                None => None,
            };
            let out = outs[0].f32(op, mn)?;
            let dims = ops::matmul::Dims {
                m: a.m,
                n: a.n,
                k: a.k,
                trans_a: a.trans_a,
                trans_b: a.trans_b,
                alpha: a.alpha,
                beta: a.beta,
            };
            ops::matmul::forward(engine, out, &lhs, &rhs, bias, dims);
            Ok(())
        })
    }

    fn bias_backward_impl(
        &mut self,
        dbias: BufId,
        dout: BufId,
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        let op = "bias_backward";
        let rc = product(op, "rows*cols", &[rows, cols])?;
        self.with_outputs(op, &[("dbias", dbias)], &[("dout", dout)], |ins, outs| {
            let dout = ins.f32("dout", dout, rc)?;
            ops::matmul::bias_backward(outs[0].f32(op, cols)?, dout, rows, cols);
            Ok(())
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward_impl(
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
    ) -> Result<(), String> {
        let op = "layernorm_forward";
        let rc = product(op, "rows*cols", &[rows, cols])?;
        ensure(cols > 0 || rows == 0, op, || "cols must be positive".into())?;
        ensure(eps >= 0.0 && eps.is_finite(), op, || {
            format!("eps must be finite and >= 0, got {eps}")
        })?;
        self.with_outputs(
            op,
            &[("out", out), ("mean", mean), ("rstd", rstd)],
            &[("inp", inp), ("weight", weight), ("bias", bias)],
            |ins, outs| {
                let inp = ins.f32("inp", inp, rc)?;
                let weight = ins.f32("weight", weight, cols)?;
                let bias = ins.f32("bias", bias, cols)?;
                let [o, m, r] = outs else { unreachable!() };
                let (o, m, r) = (o.f32(op, rc)?, m.f32(op, rows)?, r.f32(op, rows)?);
                if rows > 0 {
                    ops::layernorm::forward(o, m, r, inp, weight, bias, cols, eps);
                }
                Ok(())
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward_impl(
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
    ) -> Result<(), String> {
        let op = "layernorm_backward";
        let rc = product(op, "rows*cols", &[rows, cols])?;
        self.with_outputs(
            op,
            &[("dinp", dinp), ("dweight", dweight), ("dbias", dbias)],
            &[
                ("dout", dout),
                ("inp", inp),
                ("weight", weight),
                ("mean", mean),
                ("rstd", rstd),
            ],
            |ins, outs| {
                let dout = ins.f32("dout", dout, rc)?;
                let inp = ins.f32("inp", inp, rc)?;
                let weight = ins.f32("weight", weight, cols)?;
                let mean = ins.f32("mean", mean, rows)?;
                let rstd = ins.f32("rstd", rstd, rows)?;
                let [di, dw, db] = outs else { unreachable!() };
                let (di, dw, db) = (di.f32(op, rc)?, dw.f32(op, cols)?, db.f32(op, cols)?);
                if rows > 0 && cols > 0 {
                    ops::layernorm::backward(di, dw, db, dout, inp, weight, mean, rstd, cols);
                }
                Ok(())
            },
        )
    }

    fn gelu_forward_impl(&mut self, out: BufId, inp: BufId, n: usize) -> Result<(), String> {
        let op = "gelu_forward";
        self.with_outputs(op, &[("out", out)], &[("inp", inp)], |ins, outs| {
            let inp = ins.f32("inp", inp, n)?;
            ops::gelu::forward(outs[0].f32(op, n)?, inp);
            Ok(())
        })
    }

    fn gelu_backward_impl(
        &mut self,
        dinp: BufId,
        inp: BufId,
        dout: BufId,
        n: usize,
    ) -> Result<(), String> {
        let op = "gelu_backward";
        self.with_outputs(
            op,
            &[("dinp", dinp)],
            &[("inp", inp), ("dout", dout)],
            |ins, outs| {
                let (inp, dout) = (ins.f32("inp", inp, n)?, ins.f32("dout", dout, n)?);
                ops::gelu::backward(outs[0].f32(op, n)?, inp, dout);
                Ok(())
            },
        )
    }

    /// Checks attention shapes; returns (B*T*C, B*T*3C, B*NH*T*T).
    fn attention_sizes(
        op: &str,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<(usize, usize, usize), String> {
        ensure(nh > 0 && c.is_multiple_of(nh), op, || {
            format!("C = {c} must be a positive multiple of NH = {nh}")
        })?;
        let btc = product(op, "B*T*C", &[b, t, c])?;
        let qkv = product(op, "B*T*3C", &[btc, 3])?;
        let att = product(op, "B*NH*T*T", &[b, nh, t, t])?;
        Ok((btc, qkv, att))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_forward_impl(
        &mut self,
        out: BufId,
        att: BufId,
        qkv: BufId,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<(), String> {
        let op = "attention_forward";
        let (n_out, n_qkv, n_att) = Self::attention_sizes(op, b, t, c, nh)?;
        let engine = self.engine;
        self.with_outputs(
            op,
            &[("out", out), ("att", att)],
            &[("qkv", qkv)],
            |ins, outs| {
                let qkv = ins.f32("qkv", qkv, n_qkv)?;
                let [o, a] = outs else { unreachable!() };
                let (o, a) = (o.f32(op, n_out)?, a.f32(op, n_att)?);
                if n_out > 0 {
                    ops::attention::forward(
                        engine,
                        o,
                        a,
                        qkv,
                        ops::attention::Shape { b, t, c, nh },
                    );
                }
                Ok(())
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn encoder_forward_positions_impl(
        &mut self,
        out: BufId,
        tokens: BufId,
        positions: BufId,
        wte: BufId,
        wpe: BufId,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<(), String> {
        let op = "encoder_forward_positions";
        let bt = product(op, "B*T", &[b, t])?;
        let btc = product(op, "B*T*C", &[bt, c])?;
        self.with_outputs(
            op,
            &[("out", out)],
            &[
                ("tokens", tokens),
                ("positions", positions),
                ("wte", wte),
                ("wpe", wpe),
            ],
            |ins, outs| {
                let tokens = ins.u32("tokens", tokens, bt)?;
                let positions = ins.u32("positions", positions, bt)?;
                let wte = ins.f32_whole("wte", wte)?;
                let wpe = ins.f32_whole("wpe", wpe)?;
                check_tokens(op, "wte", tokens, wte.len(), c)?;
                check_positions(op, "wpe", positions, wpe.len(), c)?;
                let wte = &wte[..rows_of(wte.len(), c) * c];
                let wpe = &wpe[..rows_of(wpe.len(), c) * c];
                let out = outs[0].f32(op, btc)?;
                if btc > 0 {
                    ops::encoder::forward_positions(out, tokens, positions, wte, wpe, c);
                }
                Ok(())
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn encoder_backward_positions_impl(
        &mut self,
        dwte: BufId,
        dwpe: BufId,
        dout: BufId,
        tokens: BufId,
        positions: BufId,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<(), String> {
        let op = "encoder_backward_positions";
        let bt = product(op, "B*T", &[b, t])?;
        let btc = product(op, "B*T*C", &[bt, c])?;
        self.with_outputs(
            op,
            &[("dwte", dwte), ("dwpe", dwpe)],
            &[("dout", dout), ("tokens", tokens), ("positions", positions)],
            |ins, outs| {
                let dout = ins.f32("dout", dout, btc)?;
                let tokens = ins.u32("tokens", tokens, bt)?;
                let positions = ins.u32("positions", positions, bt)?;
                let [o_wte, o_wpe] = outs else { unreachable!() };
                let dwte = o_wte.f32_whole(op)?;
                let dwpe = o_wpe.f32_whole(op)?;
                check_tokens(op, "dwte", tokens, dwte.len(), c)?;
                check_positions(op, "dwpe", positions, dwpe.len(), c)?;
                let dwte_len = rows_of(dwte.len(), c) * c;
                let dwpe_len = rows_of(dwpe.len(), c) * c;
                if btc > 0 {
                    ops::encoder::backward_positions(
                        &mut dwte[..dwte_len],
                        &mut dwpe[..dwpe_len],
                        dout,
                        tokens,
                        positions,
                        c,
                    );
                }
                Ok(())
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_forward_segments_impl(
        &mut self,
        out: BufId,
        att: BufId,
        qkv: BufId,
        segments: BufId,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<(), String> {
        let op = "attention_forward_segments";
        let (n_out, n_qkv, n_att) = Self::attention_sizes(op, b, t, c, nh)?;
        let bt = product(op, "B*T", &[b, t])?;
        let engine = self.engine;
        self.with_outputs(
            op,
            &[("out", out), ("att", att)],
            &[("qkv", qkv), ("segments", segments)],
            |ins, outs| {
                let qkv = ins.f32("qkv", qkv, n_qkv)?;
                let segments = ins.u32("segments", segments, bt)?;
                let [o, a] = outs else { unreachable!() };
                let (o, a) = (o.f32(op, n_out)?, a.f32(op, n_att)?);
                if n_out > 0 {
                    ops::attention::forward_segments(
                        engine,
                        o,
                        a,
                        qkv,
                        segments,
                        ops::attention::Shape { b, t, c, nh },
                    );
                }
                Ok(())
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_backward_impl(
        &mut self,
        dqkv: BufId,
        dout: BufId,
        qkv: BufId,
        att: BufId,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<(), String> {
        let op = "attention_backward";
        let (n_out, n_qkv, n_att) = Self::attention_sizes(op, b, t, c, nh)?;
        let engine = self.engine;
        self.with_outputs(
            op,
            &[("dqkv", dqkv)],
            &[("dout", dout), ("qkv", qkv), ("att", att)],
            |ins, outs| {
                let dout = ins.f32("dout", dout, n_out)?;
                let qkv = ins.f32("qkv", qkv, n_qkv)?;
                let att = ins.f32("att", att, n_att)?;
                let d = outs[0].f32(op, n_qkv)?;
                if n_out > 0 {
                    ops::attention::backward(
                        engine,
                        d,
                        dout,
                        qkv,
                        att,
                        ops::attention::Shape { b, t, c, nh },
                    );
                }
                Ok(())
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_kv_forward_impl(
        &mut self,
        out: BufId,
        qkv: BufId,
        k_cache: BufId,
        v_cache: BufId,
        s: ops::attention::KvShape,
    ) -> Result<(), String> {
        let op = "attention_kv_forward";
        let (n_out, n_qkv, _) = Self::attention_sizes(op, s.b, s.t_new, s.c, s.nh)?;
        let end = s.t_past.checked_add(s.t_new);
        ensure(end.is_some_and(|e| e <= s.t_max), op, || {
            format!(
                "t_past + t_new = {} + {} exceeds the cache length t_max = {}",
                s.t_past, s.t_new, s.t_max
            )
        })?;
        let n_cache = product(op, "B*Tmax*C", &[s.b, s.t_max, s.c])?;
        self.with_outputs(
            op,
            &[("out", out), ("k_cache", k_cache), ("v_cache", v_cache)],
            &[("qkv", qkv)],
            |ins, outs| {
                let qkv = ins.f32("qkv", qkv, n_qkv)?;
                let [o, kc, vc] = outs else { unreachable!() };
                let (o, kc, vc) = (
                    o.f32(op, n_out)?,
                    kc.f32(op, n_cache)?,
                    vc.f32(op, n_cache)?,
                );
                if n_out > 0 {
                    ops::attention::kv_forward(o, qkv, kc, vc, s);
                }
                Ok(())
            },
        )
    }

    /// Checks cross-entropy shapes; returns rows*Vp.
    fn ce_sizes(op: &str, rows: usize, v: usize, vp: usize) -> Result<usize, String> {
        ensure(v >= 1 && v <= vp, op, || {
            format!("need 1 <= V <= Vp, got V = {v}, Vp = {vp}")
        })?;
        product(op, "rows*Vp", &[rows, vp])
    }

    #[allow(clippy::too_many_arguments)]
    fn crossentropy_forward_impl(
        &mut self,
        losses: BufId,
        probs: BufId,
        logits: BufId,
        targets: BufId,
        rows: usize,
        v: usize,
        vp: usize,
    ) -> Result<(), String> {
        let op = "crossentropy_forward";
        let n = Self::ce_sizes(op, rows, v, vp)?;
        self.with_outputs(
            op,
            &[("losses", losses), ("probs", probs)],
            &[("logits", logits), ("targets", targets)],
            |ins, outs| {
                let logits = ins.f32("logits", logits, n)?;
                let targets = ins.u32("targets", targets, rows)?;
                let [l, p] = outs else { unreachable!() };
                let (l, p) = (l.f32(op, rows)?, p.f32(op, n)?);
                ops::crossentropy::forward(l, p, logits, targets, v, vp);
                Ok(())
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn crossentropy_backward_impl(
        &mut self,
        dlogits: BufId,
        probs: BufId,
        targets: BufId,
        dlosses: BufId,
        rows: usize,
        v: usize,
        vp: usize,
    ) -> Result<(), String> {
        let op = "crossentropy_backward";
        let n = Self::ce_sizes(op, rows, v, vp)?;
        self.with_outputs(
            op,
            &[("dlogits", dlogits)],
            &[("probs", probs), ("targets", targets), ("dlosses", dlosses)],
            |ins, outs| {
                let probs = ins.f32("probs", probs, n)?;
                let targets = ins.u32("targets", targets, rows)?;
                let dlosses = ins.f32("dlosses", dlosses, rows)?;
                ops::crossentropy::backward(outs[0].f32(op, n)?, probs, targets, dlosses, v, vp);
                Ok(())
            },
        )
    }

    fn adamw_impl(&mut self, a: AdamWArgs) -> Result<(), String> {
        let op = "adamw";
        ensure(a.step >= 1, op, || "step counts from 1, got 0".into())?;
        self.with_outputs(
            op,
            &[("params", a.params), ("m", a.m), ("v", a.v)],
            &[("grads", a.grads)],
            |ins, outs| {
                let g = ins.f32("grads", a.grads, a.n)?;
                let [p, m, v] = outs else { unreachable!() };
                let (p, m, v) = (p.f32(op, a.n)?, m.f32(op, a.n)?, v.f32(op, a.n)?);
                let hp = ops::adamw::Hyper {
                    lr: a.lr,
                    beta1: a.beta1,
                    beta2: a.beta2,
                    eps: a.eps,
                    weight_decay: a.weight_decay,
                    grad_scale: a.grad_scale,
                    step: a.step,
                };
                ops::adamw::step(p, g, m, v, hp);
                Ok(())
            },
        )
    }
}

/// Whole rows of `c` elements in a buffer of `len` (0 when `c == 0`).
fn rows_of(len: usize, c: usize) -> usize {
    len.checked_div(c).unwrap_or(0)
}

/// Every token must index a row of the embedding table.
fn check_tokens(
    op: &str,
    table: &str,
    tokens: &[u32],
    table_len: usize,
    c: usize,
) -> Result<(), String> {
    let rows = rows_of(table_len, c);
    match tokens.iter().position(|&t| t as usize >= rows) {
        Some(i) if c > 0 => Err(format!(
            "{op}: token {} at position {i} is outside the embedding table `{table}` \
             ({rows} rows of C = {c}); check the vocabulary size",
            tokens[i]
        )),
        _ => Ok(()),
    }
}

/// Every position must index a row of the position table (`wpe` holds the
/// model's context length of rows).
fn check_positions(
    op: &str,
    table: &str,
    positions: &[u32],
    table_len: usize,
    c: usize,
) -> Result<(), String> {
    let rows = rows_of(table_len, c);
    match positions.iter().position(|&p| p as usize >= rows) {
        Some(i) if c > 0 => Err(format!(
            "{op}: position {} at index {i} is outside the position table `{table}` \
             ({rows} rows of C = {c}); positions must be below the context length",
            positions[i]
        )),
        _ => Ok(()),
    }
}

/// A matmul operand as f32: borrowed when it already is, else converted.
fn widen(s: FloatSlice<'_>) -> std::borrow::Cow<'_, [f32]> {
    match s {
        FloatSlice::F32(v) => std::borrow::Cow::Borrowed(v),
        FloatSlice::BF16(v) => {
            let mut out = vec![0f32; v.len()];
            v.convert_to_f32_slice(&mut out);
            std::borrow::Cow::Owned(out)
        }
        FloatSlice::F16(v) => {
            let mut out = vec![0f32; v.len()];
            v.convert_to_f32_slice(&mut out);
            std::borrow::Cow::Owned(out)
        }
    }
}

fn ffi<T>(r: Result<T, String>) -> RResult<T, RString> {
    match r {
        Ok(v) => RResult::ROk(v),
        Err(e) => RResult::RErr(RString::from(e)),
    }
}

impl Backend for CpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "cpu".into(),
            device: format!("CPU, {} threads", self.threads).into(),
            dtypes: RVec::from(vec![DType::F32, DType::BF16, DType::F16, DType::U32]),
        }
    }

    fn alloc(&mut self, dtype: DType, len: usize) -> RResult<BufId, RString> {
        guard("alloc", || ffi(self.alloc_impl(dtype, len)))
    }

    fn free(&mut self, buf: BufId) -> RResult<(), RString> {
        guard("free", || {
            ffi(self
                .store
                .remove(buf)
                .map(drop)
                .map_err(|e| format!("free: {e}")))
        })
    }

    fn buffer_info(&self, buf: BufId) -> RResult<BufInfoPair, RString> {
        guard("buffer_info", || {
            ffi(self
                .store
                .get(buf)
                .map(|b| BufInfoPair {
                    dtype: b.dtype(),
                    len: b.len(),
                })
                .map_err(|e| format!("buffer_info: {e}")))
        })
    }

    fn upload(&mut self, buf: BufId, bytes: RSlice<'_, u8>) -> RResult<(), RString> {
        guard("upload", || ffi(self.upload_impl(buf, bytes.as_slice())))
    }

    fn download(&mut self, buf: BufId, mut out: RSliceMut<'_, u8>) -> RResult<(), RString> {
        guard("download", || {
            ffi(self.download_impl(buf, out.as_mut_slice()))
        })
    }

    fn synchronize(&mut self) -> RResult<(), RString> {
        RResult::ROk(())
    }

    fn zero(&mut self, buf: BufId) -> RResult<(), RString> {
        guard("zero", || ffi(self.zero_impl(buf)))
    }

    fn copy(&mut self, dst: BufId, src: BufId, n: usize) -> RResult<(), RString> {
        guard("copy", || ffi(self.copy_impl(dst, src, n)))
    }

    fn cast(&mut self, dst: BufId, src: BufId, n: usize) -> RResult<(), RString> {
        guard("cast", || ffi(self.cast_impl(dst, src, n)))
    }

    fn scale(&mut self, buf: BufId, n: usize, factor: f32) -> RResult<(), RString> {
        guard("scale", || ffi(self.scale_impl(buf, n, factor)))
    }

    fn add(&mut self, out: BufId, a: BufId, b: BufId, n: usize) -> RResult<(), RString> {
        guard("add", || ffi(self.add_impl(out, a, b, n)))
    }

    fn accumulate(&mut self, dst: BufId, src: BufId, n: usize) -> RResult<(), RString> {
        guard("accumulate", || ffi(self.accumulate_impl(dst, src, n)))
    }

    fn sum_squares(&mut self, buf: BufId, n: usize) -> RResult<f64, RString> {
        guard("sum_squares", || ffi(self.sum_squares_impl(buf, n)))
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
        guard("encoder_forward", || {
            ffi(self.encoder_forward_impl("encoder_forward", out, tokens, wte, wpe, b, t, c, 0))
        })
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
        guard("encoder_backward", || {
            ffi(self.encoder_backward_impl(dwte, dwpe, dout, tokens, b, t, c))
        })
    }

    fn matmul(&mut self, args: MatmulArgs) -> RResult<(), RString> {
        guard("matmul", || ffi(self.matmul_impl(args)))
    }

    fn bias_backward(
        &mut self,
        dbias: BufId,
        dout: BufId,
        rows: usize,
        cols: usize,
    ) -> RResult<(), RString> {
        guard("bias_backward", || {
            ffi(self.bias_backward_impl(dbias, dout, rows, cols))
        })
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
        guard("layernorm_forward", || {
            ffi(self.layernorm_forward_impl(out, mean, rstd, inp, weight, bias, rows, cols, eps))
        })
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
        guard("layernorm_backward", || {
            ffi(self.layernorm_backward_impl(
                dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, cols,
            ))
        })
    }

    fn gelu_forward(&mut self, out: BufId, inp: BufId, n: usize) -> RResult<(), RString> {
        guard("gelu_forward", || ffi(self.gelu_forward_impl(out, inp, n)))
    }

    fn gelu_backward(
        &mut self,
        dinp: BufId,
        inp: BufId,
        dout: BufId,
        n: usize,
    ) -> RResult<(), RString> {
        guard("gelu_backward", || {
            ffi(self.gelu_backward_impl(dinp, inp, dout, n))
        })
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
        guard("attention_forward", || {
            ffi(self.attention_forward_impl(out, att, qkv, b, t, c, nh))
        })
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
        guard("attention_backward", || {
            ffi(self.attention_backward_impl(dqkv, dout, qkv, att, b, t, c, nh))
        })
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
        let shape = ops::attention::KvShape {
            b,
            t_new,
            t_past,
            t_max,
            c,
            nh,
        };
        guard("attention_kv_forward", || {
            ffi(self.attention_kv_forward_impl(out, qkv, k_cache, v_cache, shape))
        })
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
        guard("crossentropy_forward", || {
            ffi(self.crossentropy_forward_impl(losses, probs, logits, targets, rows, v, vp))
        })
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
        guard("crossentropy_backward", || {
            ffi(self.crossentropy_backward_impl(dlogits, probs, targets, dlosses, rows, v, vp))
        })
    }

    fn adamw(&mut self, args: AdamWArgs) -> RResult<(), RString> {
        guard("adamw", || ffi(self.adamw_impl(args)))
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
        guard("encoder_forward_at", || {
            ffi(self.encoder_forward_impl(
                "encoder_forward_at",
                out,
                tokens,
                wte,
                wpe,
                b,
                t,
                c,
                pos0,
            ))
        })
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
        guard("encoder_forward_positions", || {
            ffi(self.encoder_forward_positions_impl(out, tokens, positions, wte, wpe, b, t, c))
        })
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
        guard("encoder_backward_positions", || {
            ffi(self.encoder_backward_positions_impl(dwte, dwpe, dout, tokens, positions, b, t, c))
        })
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
        guard("attention_forward_segments", || {
            ffi(self.attention_forward_segments_impl(out, att, qkv, segments, b, t, c, nh))
        })
    }
}
