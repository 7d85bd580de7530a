//! matmul (transposes, leading dimensions, alpha/beta, bias, the GELU
//! epilogue) and bias_backward.

use kiln_abi::{DType, Epilogue, MatmulArgs, Unary};

use super::elementwise::activation;
use crate::case::OpCase;
use crate::env::Env;
use crate::fd;

type Cases = Result<Vec<OpCase>, String>;

#[derive(Clone, Copy)]
struct Mm {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    /// Extra elements per row beyond the packed row length (0: packed).
    pad_a: usize,
    pad_b: usize,
    pad_c: usize,
    alpha: f32,
    beta: f32,
    bias: bool,
    gelu: bool,
}

impl Mm {
    fn a_shape(&self) -> (usize, usize) {
        if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }
    fn b_shape(&self) -> (usize, usize) {
        if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }
    /// (leading dimension passed to the op, elements of the buffer)
    fn ld_len(rows: usize, cols: usize, pad: usize) -> (usize, usize) {
        if pad == 0 {
            (0, rows * cols)
        } else {
            (cols + pad, (rows - 1) * (cols + pad) + cols)
        }
    }
}

/// `alpha * op(a) @ op(b)` with the given row strides.
fn product(p: &Mm, a: &[f64], b: &[f64], lda: usize, ldb: usize) -> Vec<f64> {
    let mut out = vec![0.0; p.m * p.n];
    for i in 0..p.m {
        for j in 0..p.n {
            let mut s = 0.0;
            for q in 0..p.k {
                let av = if p.trans_a {
                    a[q * lda + i]
                } else {
                    a[i * lda + q]
                };
                let bv = if p.trans_b {
                    b[j * ldb + q]
                } else {
                    b[q * ldb + j]
                };
                s += av * bv;
            }
            out[i * p.n + j] = p.alpha as f64 * s;
        }
    }
    out
}

fn case(env: &mut Env, dt: DType, label: &str, p: Mm) -> OpCase {
    let mut c = OpCase::new("matmul", label, dt);
    let (ar, ac) = p.a_shape();
    let (br, bc) = p.b_shape();
    let (lda, a_len) = Mm::ld_len(ar, ac, p.pad_a);
    let (ldb, b_len) = Mm::ld_len(br, bc, p.pad_b);
    let (ldc, c_len) = Mm::ld_len(p.m, p.n, p.pad_c);
    let init: Vec<f64> = if p.beta == 0.0 && !p.gelu {
        vec![f64::NAN; c_len] // beta = 0 must ignore old contents, even NaN
    } else {
        env.rng.vec(c_len)
    };
    let out = c.data("out", init);
    let a = c.data("a", env.rng.vec(a_len));
    let b = c.data("b", env.rng.vec(b_len));
    let bias = p.bias.then(|| c.data("bias", env.rng.vec(p.n)));
    let pre_act = p.gelu.then(|| c.data("pre_act", env.rng.vec(c_len)));
    let prod = product(&p, &c.vals(a), &c.vals(b), lda.max(ac), ldb.max(bc));
    let (old, bias_v) = (c.vals(out), bias.map(|x| c.vals(x)));
    let ldc_r = ldc.max(p.n);
    let mut want = old.clone();
    let mut want_pre = pre_act.map(|x| c.vals(x));
    for i in 0..p.m {
        for j in 0..p.n {
            let mut v = prod[i * p.n + j] + bias_v.as_ref().map_or(0.0, |bv| bv[j]);
            if p.beta != 0.0 {
                v += p.beta as f64 * old[i * ldc_r + j];
            }
            if let Some(pre) = want_pre.as_mut() {
                pre[i * ldc_r + j] = v;
                v = activation(Unary::Gelu, v);
            }
            want[i * ldc_r + j] = v;
        }
    }
    c.expect(out, want);
    if let (Some(pre), Some(w)) = (pre_act, want_pre) {
        c.expect(pre, w);
    }
    c.call(move |be, ids| {
        be.matmul(MatmulArgs {
            out: ids[out],
            a: ids[a],
            b: ids[b],
            bias: bias.map(|x| ids[x]).into(),
            m: p.m,
            n: p.n,
            k: p.k,
            trans_a: p.trans_a,
            trans_b: p.trans_b,
            lda,
            ldb,
            ldc,
            alpha: p.alpha,
            beta: p.beta,
            epilogue: if p.gelu {
                Epilogue::Gelu
            } else {
                Epilogue::None
            },
            pre_act: pre_act.map(|x| ids[x]).into(),
        })
    });
    c
}

pub fn matmul(env: &mut Env, dt: DType) -> Cases {
    let base = Mm {
        m: 5,
        n: 7,
        k: 3,
        trans_a: false,
        trans_b: false,
        pad_a: 0,
        pad_b: 0,
        pad_c: 0,
        alpha: 1.0,
        beta: 0.0,
        bias: false,
        gelu: false,
    };
    let cases = vec![
        case(env, dt, "5x3 @ 3x7 (out starts NaN, beta 0)", base),
        case(
            env,
            dt,
            "x @ W^T + bias (a linear layer)",
            Mm {
                m: 4,
                n: 6,
                k: 9,
                trans_b: true,
                bias: true,
                ..base
            },
        ),
        case(
            env,
            dt,
            "a^T @ b, alpha 0.5, beta 1 (weight gradient)",
            Mm {
                m: 3,
                n: 5,
                k: 7,
                trans_a: true,
                alpha: 0.5,
                beta: 1.0,
                ..base
            },
        ),
        case(
            env,
            dt,
            "a^T @ b^T with row strides, beta 1",
            Mm {
                m: 4,
                n: 3,
                k: 5,
                trans_a: true,
                trans_b: true,
                pad_a: 2,
                pad_b: 3,
                pad_c: 1,
                beta: 1.0,
                ..base
            },
        ),
        case(
            env,
            dt,
            "column block through lda/ldc (q of a fused qkv)",
            Mm {
                m: 6,
                n: 4,
                k: 5,
                pad_a: 4,
                pad_c: 5,
                bias: true,
                ..base
            },
        ),
        case(
            env,
            dt,
            "gelu(x @ W^T + bias) with pre-activation",
            Mm {
                m: 3,
                n: 6,
                k: 4,
                trans_b: true,
                bias: true,
                gelu: true,
                ..base
            },
        ),
        case(
            env,
            dt,
            "13x70 @ (19x70)^T (past kernel blocking)",
            Mm {
                m: 13,
                n: 19,
                k: 70,
                trans_b: true,
                ..base
            },
        ),
    ];
    Ok(cases)
}

pub fn bias_backward(env: &mut Env, dt: DType) -> Cases {
    let (rows, cols) = (7, 5);
    let mut c = OpCase::new("bias_backward", format!("{rows}x{cols} (accumulates)"), dt);
    let dbias = c.data("dbias", env.rng.vec(cols));
    let dout = c.data("dout", env.rng.vec(rows * cols));
    let d = c.vals(dout);
    // The gradient of sum(dout * (x + bias broadcast over rows)) w.r.t. bias.
    let grad = fd::grad(&env.rng.vec(cols), |bias| {
        let y: Vec<f64> = (0..rows * cols).map(|i| bias[i % cols]).collect();
        fd::dot(&d, &y)
    });
    c.expect(dbias, fd::plus(&c.vals(dbias), &grad));
    c.call(move |be, ids| be.bias_backward(ids[dbias], ids[dout], rows, cols));
    Ok(vec![c])
}
