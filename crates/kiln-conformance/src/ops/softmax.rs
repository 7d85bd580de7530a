//! Softmax over the last dimension (f32: routers and the z-loss), with the
//! optional log-sum-exp and its gradient path.

use kiln_abi::{DType, ROption};

use crate::case::OpCase;
use crate::env::Env;
use crate::fd;

type Cases = Result<Vec<OpCase>, String>;

const ROWS: usize = 4;
const COLS: usize = 7;

fn softmax(x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut out, mut lses) = (Vec::new(), Vec::new());
    for r in 0..ROWS {
        let row = &x[r * COLS..(r + 1) * COLS];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
        out.extend(row.iter().map(|v| (v - max).exp() / z));
        lses.push(max + z.ln());
    }
    (out, lses)
}

pub fn forward(env: &mut Env, _dt: DType) -> Cases {
    let mut cases = Vec::new();
    for with_lse in [true, false] {
        let label = if with_lse {
            "with log-sum-exp"
        } else {
            "without log-sum-exp"
        };
        let mut c = OpCase::new("softmax_forward", label, DType::F32);
        let out = c.f32("out", vec![0.0; ROWS * COLS]);
        let lse = with_lse.then(|| c.f32("lse", vec![0.0; ROWS]));
        // only `out` and `lse` are f32 by definition; the input is data
        let inp = c.float("inp", DType::F32, env.rng.vec_in(ROWS * COLS, -5.0, 5.0));
        let (p, l) = softmax(&c.vals(inp));
        c.expect(out, p);
        if let Some(lse) = lse {
            c.expect(lse, l);
        }
        c.call(move |be, ids| {
            let lse: ROption<_> = lse.map(|i| ids[i]).into();
            be.softmax_forward(ids[out], lse, ids[inp], ROWS, COLS)
        });
        cases.push(c);
    }
    Ok(cases)
}

pub fn backward(env: &mut Env, _dt: DType) -> Cases {
    let mut cases = Vec::new();
    for with_dlse in [true, false] {
        let label = if with_dlse {
            "with dlse (z-loss path)"
        } else {
            "without dlse"
        };
        let mut c = OpCase::new(
            "softmax_backward",
            format!("{label} (accumulates)"),
            DType::F32,
        );
        let x = env.rng.vec_in(ROWS * COLS, -5.0, 5.0);
        let x: Vec<f64> = x.iter().map(|&v| v as f32 as f64).collect();
        let (p, _) = softmax(&x);
        let dinp = c.float("dinp", DType::F32, env.rng.vec(ROWS * COLS));
        let out = c.f32("out", p);
        let dout = c.float("dout", DType::F32, env.rng.vec(ROWS * COLS));
        let dlse = with_dlse.then(|| c.f32("dlse", env.rng.vec(ROWS)));
        let (d, dl) = (c.vals(dout), dlse.map(|i| c.vals(i)));
        let g = fd::grad(&x, |v| {
            let (p, l) = softmax(v);
            fd::dot(&d, &p) + dl.as_ref().map_or(0.0, |dl| fd::dot(dl, &l))
        });
        c.expect(dinp, fd::plus(&c.vals(dinp), &g));
        c.call(move |be, ids| {
            let dlse: ROption<_> = dlse.map(|i| ids[i]).into();
            be.softmax_backward(ids[dinp], ids[out], ids[dout], dlse, ROWS, COLS)
        });
        cases.push(c);
    }
    Ok(cases)
}
