//! Rotary position embeddings (Hugging Face `rotate_half`), in place,
//! forward and inverse (the backward).

use kiln_abi::{DType, RopeArgs};

use crate::case::OpCase;
use crate::env::Env;
use crate::fd;

type Cases = Result<Vec<OpCase>, String>;

const B: usize = 2;
const T: usize = 4;
const HEADS: usize = 2;
const HD: usize = 6;
/// A row holds another head before the rotated ones and one after
/// (the rest of a fused qkv row), which must stay untouched.
const COL_OFFSET: usize = HD;
const ROW_WIDTH: usize = (HEADS + 2) * HD;
const MAX_T: usize = 8;
const THETA: f64 = 10000.0;
const PACKED: [u32; B * T] = [0, 1, 2, 0, 7, 3, 1, 0];

/// The host's tables: `[MAX_T, HD/2]` cos and sin, as f32 values.
fn tables() -> (Vec<f64>, Vec<f64>) {
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..MAX_T {
        for j in 0..HD / 2 {
            let angle = p as f64 * THETA.powf(-2.0 * j as f64 / HD as f64);
            cos.push(angle.cos() as f32 as f64);
            sin.push(angle.sin() as f32 as f64);
        }
    }
    (cos, sin)
}

fn rotate(
    x: &[f64],
    cos: &[f64],
    sin: &[f64],
    pos: &dyn Fn(usize, usize) -> usize,
    inverse: bool,
) -> Vec<f64> {
    let mut y = x.to_vec();
    let half = HD / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    for b in 0..B {
        for t in 0..T {
            let p = pos(b, t);
            let row = (b * T + t) * ROW_WIDTH;
            for h in 0..HEADS {
                let base = row + COL_OFFSET + h * HD;
                for j in 0..half {
                    let (c, s) = (cos[p * half + j], sign * sin[p * half + j]);
                    let (x1, x2) = (x[base + j], x[base + j + half]);
                    y[base + j] = x1 * c - x2 * s;
                    y[base + j + half] = x2 * c + x1 * s;
                }
            }
        }
    }
    y
}

pub fn rope(env: &mut Env, dt: DType) -> Cases {
    let (cos_t, sin_t) = tables();
    let mut cases = Vec::new();
    for inverse in [false, true] {
        for explicit in [false, true] {
            let what = if inverse {
                "inverse (backward)"
            } else {
                "forward"
            };
            let at = if explicit {
                "explicit positions"
            } else {
                "positions from 3"
            };
            let mut c = OpCase::new("rope", format!("{what}, {at}, in place"), dt);
            let buf = c.data("buf", env.rng.vec(B * T * ROW_WIDTH));
            let cos = c.f32("cos", cos_t.clone());
            let sin = c.f32("sin", sin_t.clone());
            // positions from 3 reach 3 + T - 1 = 6 < MAX_T; tables need not be tight
            c.loose(cos);
            c.loose(sin);
            let positions = explicit.then(|| c.index("positions", PACKED.to_vec()));
            let pos0 = if explicit { 0 } else { 3 };
            let pos = move |b: usize, t: usize| {
                if explicit {
                    PACKED[b * T + t] as usize
                } else {
                    pos0 + t
                }
            };
            let x = c.vals(buf);
            let want = if inverse {
                // The backward is the transpose of the forward's Jacobian.
                fd::grad(&env.rng.vec(x.len()), |v| {
                    fd::dot(&x, &rotate(v, &cos_t, &sin_t, &pos, false))
                })
            } else {
                rotate(&x, &cos_t, &sin_t, &pos, false)
            };
            c.expect(buf, want);
            c.call(move |be, ids| {
                be.rope(RopeArgs {
                    buf: ids[buf],
                    cos: ids[cos],
                    sin: ids[sin],
                    positions: positions.map(|p| ids[p]).into(),
                    pos0,
                    b: B,
                    t: T,
                    row_width: ROW_WIDTH,
                    col_offset: COL_OFFSET,
                    n_heads: HEADS,
                    head_dim: HD,
                    inverse,
                })
            });
            cases.push(c);
        }
    }
    // A position past the tables is an error.
    let mut c = OpCase::new("rope", "position past the cos/sin tables", dt);
    let buf = c.data("buf", env.rng.vec(B * T * ROW_WIDTH));
    let cos = c.f32("cos", cos_t.clone());
    let sin = c.f32("sin", sin_t);
    c.must_fail(format!(
        "positions {}..{} with {MAX_T}-row tables",
        MAX_T - 1,
        MAX_T - 1 + T
    ));
    c.call(move |be, ids| {
        be.rope(RopeArgs {
            buf: ids[buf],
            cos: ids[cos],
            sin: ids[sin],
            positions: kiln_abi::ROption::RNone,
            pos0: MAX_T - 1,
            b: B,
            t: T,
            row_width: ROW_WIDTH,
            col_offset: COL_OFFSET,
            n_heads: HEADS,
            head_dim: HD,
            inverse: false,
        })
    });
    cases.push(c);
    Ok(cases)
}
