//! Token (+ position) embedding forward and backward.

use kiln_abi::{DType, EmbeddingArgs, EmbeddingBackwardArgs, ROption};

use crate::case::OpCase;
use crate::env::Env;
use crate::fd;

type Cases = Result<Vec<OpCase>, String>;

const V: usize = 11;
const B: usize = 2;
const T: usize = 5;
const C: usize = 6;

/// How positions are given.
#[derive(Clone, Copy)]
enum Pos {
    From(usize),
    /// Per-token positions (packed rows); the largest is `T - 1`.
    Explicit,
}

const PACKED: [u32; B * T] = [0, 1, 2, 0, 1, 0, 1, 2, 3, 4];

fn position(pos: Pos, b: usize, t: usize) -> usize {
    match pos {
        Pos::From(p0) => p0 + t,
        Pos::Explicit => PACKED[b * T + t] as usize,
    }
}

fn wpe_rows(pos: Pos) -> usize {
    match pos {
        Pos::From(p0) => p0 + T,
        Pos::Explicit => T,
    }
}

fn embed(tokens: &[f64], wte: &[f64], wpe: Option<&[f64]>, pos: Pos) -> Vec<f64> {
    let mut out = vec![0.0; B * T * C];
    for b in 0..B {
        for t in 0..T {
            let tok = tokens[b * T + t] as usize;
            for i in 0..C {
                let p = wpe.map_or(0.0, |w| w[position(pos, b, t) * C + i]);
                out[(b * T + t) * C + i] = wte[tok * C + i] + p;
            }
        }
    }
    out
}

fn pos_parts(pos: Pos) -> (usize, bool) {
    match pos {
        Pos::From(p0) => (p0, false),
        Pos::Explicit => (0, true),
    }
}

pub fn forward(env: &mut Env, dt: DType) -> Cases {
    let settings = [
        ("wte + wpe", Pos::From(0), true),
        ("wte + wpe from position 3", Pos::From(3), true),
        (
            "wte + wpe at explicit positions (packed)",
            Pos::Explicit,
            true,
        ),
        ("wte only (rotary models)", Pos::From(0), false),
    ];
    let mut cases = Vec::new();
    for (label, pos, with_wpe) in settings {
        let mut c = OpCase::new("embedding_forward", label, dt);
        let out = c.data("out", vec![0.0; B * T * C]);
        let tokens = c.index("tokens", env.rng.indices(B * T, V as u32));
        let wte = c.data("wte", env.rng.vec(V * C));
        let wpe = with_wpe.then(|| c.data("wpe", env.rng.vec(wpe_rows(pos) * C)));
        let (pos0, explicit) = pos_parts(pos);
        let positions = explicit.then(|| c.index("positions", PACKED.to_vec()));
        let wpe_vals = wpe.map(|w| c.vals(w));
        c.expect(
            out,
            embed(&c.vals(tokens), &c.vals(wte), wpe_vals.as_deref(), pos),
        );
        c.call(move |be, ids| {
            be.embedding_forward(EmbeddingArgs {
                out: ids[out],
                tokens: ids[tokens],
                wte: ids[wte],
                wpe: wpe.map(|w| ids[w]).into(),
                positions: positions.map(|p| ids[p]).into(),
                pos0,
                b: B,
                t: T,
                c: C,
            })
        });
        cases.push(c);
    }
    // A token past the end of wte is an error, not a wild read.
    let mut c = OpCase::new("embedding_forward", "token id past the end of wte", dt);
    let out = c.data("out", vec![0.0; B * T * C]);
    let mut toks = env.rng.indices(B * T, V as u32);
    toks[3] = V as u32;
    let tokens = c.index("tokens", toks);
    let wte = c.data("wte", env.rng.vec(V * C));
    c.must_fail(format!("token {V} with a {V}-row wte"));
    c.call(move |be, ids| {
        be.embedding_forward(EmbeddingArgs {
            out: ids[out],
            tokens: ids[tokens],
            wte: ids[wte],
            wpe: ROption::RNone,
            positions: ROption::RNone,
            pos0: 0,
            b: B,
            t: T,
            c: C,
        })
    });
    cases.push(c);
    Ok(cases)
}

pub fn backward(env: &mut Env, dt: DType) -> Cases {
    let settings = [
        ("dwte and dwpe", Pos::From(0), true, true),
        (
            "dwte and dwpe at explicit positions",
            Pos::Explicit,
            true,
            true,
        ),
        ("dwte only (frozen wpe)", Pos::From(0), true, false),
        ("dwpe only from position 2", Pos::From(2), false, true),
    ];
    let mut cases = Vec::new();
    for (label, pos, with_dwte, with_dwpe) in settings {
        let mut c = OpCase::new("embedding_backward", format!("{label} (accumulates)"), dt);
        let rows = wpe_rows(pos);
        let dwte = with_dwte.then(|| c.data("dwte", env.rng.vec(V * C)));
        let dwpe = with_dwpe.then(|| c.data("dwpe", env.rng.vec(rows * C)));
        let dout = c.data("dout", env.rng.vec(B * T * C));
        let tokens = c.index("tokens", env.rng.indices(B * T, V as u32));
        let (pos0, explicit) = pos_parts(pos);
        let positions = explicit.then(|| c.index("positions", PACKED.to_vec()));
        // The gradient of sum(dout * embed(wte, wpe)) at any point (it is linear).
        let (d, toks) = (c.vals(dout), c.vals(tokens));
        let wte0 = env.rng.vec(V * C);
        let wpe0 = env.rng.vec(rows * C);
        if let Some(g) = dwte {
            let grad = fd::grad(&wte0, |w| fd::dot(&d, &embed(&toks, w, Some(&wpe0), pos)));
            c.expect(g, fd::plus(&c.vals(g), &grad));
        }
        if let Some(g) = dwpe {
            let grad = fd::grad(&wpe0, |w| fd::dot(&d, &embed(&toks, &wte0, Some(w), pos)));
            c.expect(g, fd::plus(&c.vals(g), &grad));
        }
        c.call(move |be, ids| {
            be.embedding_backward(EmbeddingBackwardArgs {
                dwte: dwte.map(|g| ids[g]).into(),
                dwpe: dwpe.map(|g| ids[g]).into(),
                dout: ids[dout],
                tokens: ids[tokens],
                positions: positions.map(|p| ids[p]).into(),
                pos0,
                b: B,
                t: T,
                c: C,
            })
        });
        cases.push(c);
    }
    Ok(cases)
}
