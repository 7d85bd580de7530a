//! LayerNorm and RMSNorm, forward (optionally fused with the residual add)
//! and backward.

use kiln_abi::{DType, NormArgs, NormBackwardArgs, NormKind, ROption};

use crate::case::OpCase;
use crate::env::Env;
use crate::fd;

type Cases = Result<Vec<OpCase>, String>;

const ROWS: usize = 5;
const COLS: usize = 7;
const EPS: f32 = 1e-5;

struct Normed {
    out: Vec<f64>,
    mean: Vec<f64>,
    rstd: Vec<f64>,
}

fn normalize(kind: NormKind, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Normed {
    let (mut out, mut means, mut rstds) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..ROWS {
        let row = &x[r * COLS..(r + 1) * COLS];
        let n = COLS as f64;
        let (mean, rstd) = match kind {
            NormKind::LayerNorm => {
                let mean = row.iter().sum::<f64>() / n;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                (mean, 1.0 / (var + EPS as f64).sqrt())
            }
            NormKind::RmsNorm => {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / n;
                (0.0, 1.0 / (ms + EPS as f64).sqrt())
            }
        };
        for (j, v) in row.iter().enumerate() {
            out.push((v - mean) * rstd * w[j] + b.map_or(0.0, |b| b[j]));
        }
        means.push(mean);
        rstds.push(rstd);
    }
    Normed {
        out,
        mean: means,
        rstd: rstds,
    }
}

pub fn forward(env: &mut Env, dt: DType) -> Cases {
    use NormKind::*;
    let settings = [
        ("LayerNorm", LayerNorm, true, false),
        ("LayerNorm without bias", LayerNorm, false, false),
        (
            "LayerNorm fused with the residual add",
            LayerNorm,
            true,
            true,
        ),
        ("RMSNorm", RmsNorm, false, false),
        ("RMSNorm fused with the residual add", RmsNorm, false, true),
    ];
    let mut cases = Vec::new();
    for (label, kind, with_bias, fused) in settings {
        let mut c = OpCase::new("norm_forward", label, dt);
        let n = ROWS * COLS;
        let out = c.data("out", vec![0.0; n]);
        let ln = kind == LayerNorm;
        let mean = ln.then(|| c.f32("mean", vec![0.0; ROWS]));
        let rstd = c.f32("rstd", vec![0.0; ROWS]);
        let inp = c.data("inp", env.rng.vec_in(n, -2.0, 3.0));
        let weight = c.data("weight", env.rng.vec_in(COLS, 0.5, 1.5));
        let bias = with_bias.then(|| c.data("bias", env.rng.vec(COLS)));
        let residual = fused.then(|| c.data("residual", env.rng.vec(n)));
        let residual_out = fused.then(|| c.data("residual_out", vec![0.0; n]));
        // What is normalised: inp, or inp + residual as stored in residual_out.
        let x: Vec<f64> = match residual {
            Some(r) => fd::plus(&c.vals(inp), &c.vals(r))
                .iter()
                .map(|&v| crate::values::round_to(dt, v))
                .collect(),
            None => c.vals(inp),
        };
        let bias_v = bias.map(|b| c.vals(b));
        let want = normalize(kind, &x, &c.vals(weight), bias_v.as_deref());
        c.expect(out, want.out);
        if let Some(m) = mean {
            c.expect(m, want.mean);
        }
        c.expect(rstd, want.rstd);
        if let Some(ro) = residual_out {
            c.expect(ro, x);
        }
        c.call(move |be, ids| {
            be.norm_forward(NormArgs {
                kind,
                out: ids[out],
                mean: mean.map(|m| ids[m]).into(),
                rstd: ids[rstd],
                inp: ids[inp],
                weight: ids[weight],
                bias: bias.map(|b| ids[b]).into(),
                residual: residual.map(|r| ids[r]).into(),
                residual_out: residual_out.map(|r| ids[r]).into(),
                rows: ROWS,
                cols: COLS,
                eps: EPS,
            })
        });
        cases.push(c);
    }
    // LayerNorm needs its mean buffer.
    let mut c = OpCase::new("norm_forward", "LayerNorm without mean", dt);
    let out = c.data("out", vec![0.0; ROWS * COLS]);
    let rstd = c.f32("rstd", vec![0.0; ROWS]);
    let inp = c.data("inp", env.rng.vec(ROWS * COLS));
    let weight = c.data("weight", env.rng.vec(COLS));
    c.must_fail("LayerNorm with mean = None");
    c.call(move |be, ids| {
        be.norm_forward(NormArgs {
            kind: NormKind::LayerNorm,
            out: ids[out],
            mean: ROption::RNone,
            rstd: ids[rstd],
            inp: ids[inp],
            weight: ids[weight],
            bias: ROption::RNone,
            residual: ROption::RNone,
            residual_out: ROption::RNone,
            rows: ROWS,
            cols: COLS,
            eps: EPS,
        })
    });
    cases.push(c);
    Ok(cases)
}

pub fn backward(env: &mut Env, dt: DType) -> Cases {
    use NormKind::*;
    let settings = [
        ("LayerNorm: dinp, dweight, dbias", LayerNorm, true, true),
        (
            "LayerNorm: dinp only (frozen weights)",
            LayerNorm,
            false,
            false,
        ),
        ("RMSNorm: dinp, dweight", RmsNorm, true, false),
        ("RMSNorm: dinp only", RmsNorm, false, false),
    ];
    let mut cases = Vec::new();
    for (label, kind, with_dw, with_db) in settings {
        let mut c = OpCase::new("norm_backward", format!("{label} (accumulates)"), dt);
        let n = ROWS * COLS;
        let dinp = c.data("dinp", env.rng.vec(n));
        let dweight = with_dw.then(|| c.data("dweight", env.rng.vec(COLS)));
        let dbias = with_db.then(|| c.data("dbias", env.rng.vec(COLS)));
        let dout = c.data("dout", env.rng.vec(n));
        let inp = c.data("inp", env.rng.vec_in(n, -2.0, 3.0));
        let weight = c.data("weight", env.rng.vec_in(COLS, 0.5, 1.5));
        let bias0 = env.rng.vec(COLS);
        let (x, w, d) = (c.vals(inp), c.vals(weight), c.vals(dout));
        let stats = normalize(kind, &x, &w, None);
        let ln = kind == LayerNorm;
        let mean = ln.then(|| c.f32("mean", stats.mean.clone()));
        let rstd = c.f32("rstd", stats.rstd.clone());
        let b = ln.then_some(bias0.as_slice());
        let g_x = fd::grad(&x, |x| fd::dot(&d, &normalize(kind, x, &w, b).out));
        c.expect(dinp, fd::plus(&c.vals(dinp), &g_x));
        if let Some(dw) = dweight {
            let g = fd::grad(&w, |w| fd::dot(&d, &normalize(kind, &x, w, b).out));
            c.expect(dw, fd::plus(&c.vals(dw), &g));
        }
        if let Some(db) = dbias {
            let g = fd::grad(&bias0, |bb| {
                fd::dot(&d, &normalize(kind, &x, &w, Some(bb)).out)
            });
            c.expect(db, fd::plus(&c.vals(db), &g));
        }
        c.call(move |be, ids| {
            be.norm_backward(NormBackwardArgs {
                kind,
                dinp: ids[dinp],
                dweight: dweight.map(|g| ids[g]).into(),
                dbias: dbias.map(|g| ids[g]).into(),
                dout: ids[dout],
                inp: ids[inp],
                weight: ids[weight],
                mean: mean.map(|m| ids[m]).into(),
                rstd: ids[rstd],
                rows: ROWS,
                cols: COLS,
            })
        });
        cases.push(c);
    }
    Ok(cases)
}
