//! The mixture-of-experts routing ops: top-k, row renormalisation, row
//! gather, weighted scatter-add, row dot products and per-index counts.

use kiln_abi::{DType, ROption};

use crate::case::OpCase;
use crate::env::Env;
use crate::fd;

type Cases = Result<Vec<OpCase>, String>;

const ROWS: usize = 5;
const COLS: usize = 8;
const K: usize = 3;

/// Per row, the `k` columns with the largest `score + bias`, largest first,
/// ties to the lower column.
fn topk(
    scores: &[f64],
    bias: Option<&[f64]>,
    rows: usize,
    cols: usize,
    k: usize,
) -> (Vec<f64>, Vec<u32>) {
    let (mut values, mut indices) = (Vec::new(), Vec::new());
    for r in 0..rows {
        let key = |j: usize| scores[r * cols + j] + bias.map_or(0.0, |b| b[j]);
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        for &j in &order[..k] {
            values.push(scores[r * cols + j]);
            indices.push(j as u32);
        }
    }
    (values, indices)
}

pub fn topk_forward(env: &mut Env, _dt: DType) -> Cases {
    let settings = [
        ("random scores", false, false),
        ("with a selection bias", true, false),
        ("ties go to the lower column", false, true),
    ];
    let mut cases = Vec::new();
    for (label, with_bias, ties) in settings {
        let mut c = OpCase::new(
            "topk_forward",
            format!("k {K} of {COLS}, {label}"),
            DType::F32,
        );
        let values = c.f32("values", vec![0.0; ROWS * K]);
        let indices = c.index("indices", vec![0; ROWS * K]);
        let s = if ties {
            (0..ROWS * COLS).map(|_| env.rng.below(3) as f64).collect()
        } else {
            env.rng.vec(ROWS * COLS)
        };
        let scores = c.f32("scores", s);
        let bias = with_bias.then(|| c.f32("bias", env.rng.vec_in(COLS, -0.5, 0.5)));
        let bv = bias.map(|b| c.vals(b));
        let (v, i) = topk(&c.vals(scores), bv.as_deref(), ROWS, COLS, K);
        c.expect_exact(values, &v);
        c.expect_u32(indices, &i);
        c.call(move |be, ids| {
            let bias: ROption<_> = bias.map(|b| ids[b]).into();
            be.topk_forward(ids[values], ids[indices], ids[scores], bias, ROWS, COLS, K)
        });
        cases.push(c);
    }
    Ok(cases)
}

pub fn topk_backward(env: &mut Env, _dt: DType) -> Cases {
    let mut c = OpCase::new(
        "topk_backward",
        format!("k {K} of {COLS} (accumulates)"),
        DType::F32,
    );
    let s = env.rng.vec(ROWS * COLS);
    let (_, idx) = topk(&s, None, ROWS, COLS, K);
    let dscores = c.f32("dscores", env.rng.vec(ROWS * COLS));
    let dvalues = c.f32("dvalues", env.rng.vec(ROWS * K));
    let indices = c.index("indices", idx.clone());
    let dv = c.vals(dvalues);
    // values[r, j] = scores[r, idx[r, j]] with the selection held fixed
    let g = fd::grad(&s, |x| {
        let v: Vec<f64> = (0..ROWS * K)
            .map(|i| x[(i / K) * COLS + idx[i] as usize])
            .collect();
        fd::dot(&dv, &v)
    });
    c.expect(dscores, fd::plus(&c.vals(dscores), &g));
    c.call(move |be, ids| {
        be.topk_backward(ids[dscores], ids[dvalues], ids[indices], ROWS, COLS, K)
    });
    Ok(vec![c])
}

fn normalize(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows * cols)
        .map(|i| {
            let r = i / cols;
            x[i] / x[r * cols..(r + 1) * cols].iter().sum::<f64>()
        })
        .collect()
}

pub fn normalize_rows_forward(env: &mut Env, _dt: DType) -> Cases {
    let (rows, cols) = (4, K);
    let mut c = OpCase::new(
        "normalize_rows_forward",
        format!("{rows}x{cols} gates"),
        DType::F32,
    );
    let out = c.f32("out", vec![0.0; rows * cols]);
    let inp = c.f32("inp", env.rng.vec_in(rows * cols, 0.05, 1.0));
    c.expect(out, normalize(&c.vals(inp), rows, cols));
    c.call(move |be, ids| be.normalize_rows_forward(ids[out], ids[inp], rows, cols));
    Ok(vec![c])
}

pub fn normalize_rows_backward(env: &mut Env, _dt: DType) -> Cases {
    let (rows, cols) = (4, K);
    let mut c = OpCase::new(
        "normalize_rows_backward",
        format!("{rows}x{cols} gates (accumulates)"),
        DType::F32,
    );
    let dinp = c.f32("dinp", env.rng.vec(rows * cols));
    let inp = c.f32("inp", env.rng.vec_in(rows * cols, 0.05, 1.0));
    let x = c.vals(inp);
    let out = c.f32("out", normalize(&x, rows, cols));
    let dout = c.f32("dout", env.rng.vec(rows * cols));
    let d = c.vals(dout);
    let g = fd::grad(&x, |v| fd::dot(&d, &normalize(v, rows, cols)));
    c.expect(dinp, fd::plus(&c.vals(dinp), &g));
    c.call(move |be, ids| {
        be.normalize_rows_backward(ids[dinp], ids[inp], ids[out], ids[dout], rows, cols)
    });
    Ok(vec![c])
}

const SRC_ROWS: usize = 7;
const N: usize = 9;
const W: usize = 5;

pub fn gather_rows(env: &mut Env, dt: DType) -> Cases {
    let mut c = OpCase::new(
        "gather_rows",
        format!("{N} of {SRC_ROWS} rows, repeats"),
        dt,
    );
    let out = c.data("out", vec![0.0; N * W]);
    let src = c.data("src", env.rng.vec(SRC_ROWS * W));
    let indices = c.index("indices", env.rng.indices(N, SRC_ROWS as u32));
    let (s, idx) = (c.vals(src), c.vals(indices));
    let want: Vec<f64> = (0..N * W)
        .map(|i| s[idx[i / W] as usize * W + i % W])
        .collect();
    c.expect_exact(out, &want);
    c.call(move |be, ids| be.gather_rows(ids[out], ids[src], ids[indices], N, W));
    let mut cases = vec![c];
    let mut c = OpCase::new("gather_rows", "an index past the source", dt);
    let out = c.data("out", vec![0.0; 2 * W]);
    let src = c.data("src", env.rng.vec(3 * W));
    let indices = c.index("indices", vec![1, 3]);
    c.must_fail("index 3 of a 3-row source");
    c.call(move |be, ids| be.gather_rows(ids[out], ids[src], ids[indices], 2, W));
    cases.push(c);
    Ok(cases)
}

pub fn scatter_add_rows(env: &mut Env, dt: DType) -> Cases {
    let dst_rows = 6;
    let mut cases = Vec::new();
    for weighted in [true, false] {
        let label = if weighted {
            "weighted (MoE combine)"
        } else {
            "unweighted (gather's backward)"
        };
        let mut c = OpCase::new(
            "scatter_add_rows",
            format!("{N} rows into {dst_rows}, {label}"),
            dt,
        );
        let dst = c.data("dst", env.rng.vec(dst_rows * W));
        let src = c.data("src", env.rng.vec(N * W));
        let indices = c.index("indices", env.rng.indices(N, dst_rows as u32));
        let weights = weighted.then(|| c.f32("weights", env.rng.vec_in(N, 0.0, 1.0)));
        let (s, idx) = (c.vals(src), c.vals(indices));
        let wv = weights.map(|w| c.vals(w));
        let mut want = c.vals(dst);
        for i in 0..N {
            let w = wv.as_ref().map_or(1.0, |w| w[i]);
            for j in 0..W {
                want[idx[i] as usize * W + j] += w * s[i * W + j];
            }
        }
        c.expect(dst, want);
        c.call(move |be, ids| {
            let weights: ROption<_> = weights.map(|w| ids[w]).into();
            be.scatter_add_rows(ids[dst], ids[src], ids[indices], weights, N, W)
        });
        cases.push(c);
    }
    Ok(cases)
}

pub fn rows_dot(env: &mut Env, dt: DType) -> Cases {
    let a_rows = 4;
    let mut cases = Vec::new();
    for indexed in [true, false] {
        let label = if indexed {
            "a rows by index"
        } else {
            "a rows in order"
        };
        let mut c = OpCase::new(
            "rows_dot",
            format!("{N} rows of {W}, {label} (accumulates)"),
            dt,
        );
        let out = c.f32("out", env.rng.vec(N));
        let a = c.data("a", env.rng.vec(if indexed { a_rows } else { N } * W));
        let a_indices = indexed.then(|| c.index("a_indices", env.rng.indices(N, a_rows as u32)));
        let b = c.data("b", env.rng.vec(N * W));
        let (av, bv) = (c.vals(a), c.vals(b));
        let ai = a_indices.map(|i| c.vals(i));
        let want = c
            .vals(out)
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let r = ai.as_ref().map_or(i, |ai| ai[i] as usize);
                o + (0..W).map(|j| av[r * W + j] * bv[i * W + j]).sum::<f64>()
            })
            .collect();
        c.expect(out, want);
        c.call(move |be, ids| {
            let ai: ROption<_> = a_indices.map(|i| ids[i]).into();
            be.rows_dot(ids[out], ids[a], ai, ids[b], N, W)
        });
        cases.push(c);
    }
    Ok(cases)
}

pub fn index_counts(env: &mut Env, _dt: DType) -> Cases {
    let (n, e) = (11, 5);
    let mut c = OpCase::new(
        "index_counts",
        format!("{n} indices over {e} experts (accumulates)"),
        DType::F32,
    );
    let counts = c.f32("counts", vec![1.0, 0.0, 2.0, 0.0, 3.0]);
    let indices = c.index("indices", env.rng.indices(n, e as u32));
    let mut want = c.vals(counts);
    for i in c.vals(indices) {
        want[i as usize] += 1.0;
    }
    c.expect_exact(counts, &want);
    c.call(move |be, ids| be.index_counts(ids[counts], ids[indices], n, e));
    let mut cases = vec![c];
    let mut c = OpCase::new("index_counts", "an index >= e", DType::F32);
    let counts = c.f32("counts", vec![0.0; e]);
    let indices = c.index("indices", vec![0, e as u32, 1]);
    c.must_fail(format!("index {e} with e = {e}"));
    c.call(move |be, ids| be.index_counts(ids[counts], ids[indices], 3, e));
    cases.push(c);
    Ok(cases)
}
