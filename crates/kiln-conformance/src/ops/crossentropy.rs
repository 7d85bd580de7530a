//! Fused softmax + cross-entropy over padded logits, forward and backward
//! (which overwrites, and may run in place on the logits).

use kiln_abi::DType;

use crate::case::OpCase;
use crate::env::Env;
use crate::fd;

type Cases = Result<Vec<OpCase>, String>;

const ROWS: usize = 6;
const V: usize = 9;
const VP: usize = 12;
/// Row 4 is ignored (target >= V).
const TARGETS: [u32; ROWS] = [8, 0, 3, 3, V as u32, 5];

/// Logits with large values in the padding columns, which must not count.
fn logits(env: &mut Env) -> Vec<f64> {
    let mut l = env.rng.vec_in(ROWS * VP, -4.0, 4.0);
    for r in 0..ROWS {
        for j in V..VP {
            l[r * VP + j] = 30.0 + j as f64;
        }
    }
    l
}

fn lse(l: &[f64], r: usize) -> f64 {
    let row = &l[r * VP..r * VP + V];
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

fn losses(l: &[f64]) -> Vec<f64> {
    (0..ROWS)
        .map(|r| {
            let t = TARGETS[r] as usize;
            if t >= V {
                0.0
            } else {
                lse(l, r) - l[r * VP + t]
            }
        })
        .collect()
}

pub fn forward(env: &mut Env, dt: DType) -> Cases {
    let mut c = OpCase::new(
        "crossentropy_forward",
        format!("{ROWS} rows, V {V} of Vp {VP}, one ignored"),
        dt,
    );
    let loss = c.f32("losses", vec![0.0; ROWS]);
    let lse_b = c.f32("lse", vec![0.0; ROWS]);
    let lg = c.data("logits", logits(env));
    let targets = c.index("targets", TARGETS.to_vec());
    let l = c.vals(lg);
    c.expect(loss, losses(&l));
    // the log-sum-exp of an ignored row is unspecified (NaN: not compared)
    let want_lse = (0..ROWS)
        .map(|r| {
            if TARGETS[r] as usize >= V {
                f64::NAN
            } else {
                lse(&l, r)
            }
        })
        .collect();
    c.expect(lse_b, want_lse);
    c.call(move |be, ids| {
        be.crossentropy_forward(ids[loss], ids[lse_b], ids[lg], ids[targets], ROWS, V, VP)
    });
    Ok(vec![c])
}

pub fn backward(env: &mut Env, dt: DType) -> Cases {
    let mut cases = Vec::new();
    for in_place in [false, true] {
        let label = if in_place {
            "in place on the logits"
        } else {
            "into dlogits (overwrites)"
        };
        let mut c = OpCase::new("crossentropy_backward", label, dt);
        let lg = c.data("logits", logits(env));
        let l = c.vals(lg);
        let dl = (!in_place).then(|| c.data("dlogits", vec![123.0; ROWS * VP]));
        let lse_b = c.f32("lse", (0..ROWS).map(|r| lse(&l, r)).collect());
        let targets = c.index("targets", TARGETS.to_vec());
        let dlosses = c.f32("dlosses", env.rng.vec_in(ROWS, 0.1, 2.0));
        let w = c.vals(dlosses);
        // d/dlogits of sum_i dlosses[i] * loss_i: zero in padding and ignored rows.
        let g = fd::grad(&l, |x| fd::dot(&w, &losses(x)));
        c.expect(dl.unwrap_or(lg), g);
        c.call(move |be, ids| {
            let d = ids[dl.unwrap_or(lg)];
            be.crossentropy_backward(
                d,
                ids[lg],
                ids[lse_b],
                ids[targets],
                ids[dlosses],
                ROWS,
                V,
                VP,
            )
        });
        cases.push(c);
    }
    Ok(cases)
}
