//! Straightforward f64 implementations of the backend's ops, written from
//! their definitions (kiln_abi::Backend docs), for forward checks and for
//! finite-difference gradients.

pub fn gelu(x: f64) -> f64 {
    let s = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (s * (x + 0.044715 * x * x * x)).tanh())
}

/// Returns (out, mean, rstd).
pub fn layernorm(
    x: &[f64],
    w: &[f64],
    b: &[f64],
    rows: usize,
    cols: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; rows * cols];
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let m = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / cols as f64;
        let s = 1.0 / (var + eps).sqrt();
        for j in 0..cols {
            out[r * cols + j] = (row[j] - m) * s * w[j] + b[j];
        }
        mean[r] = m;
        rstd[r] = s;
    }
    (out, mean, rstd)
}

/// `alpha * op(a) @ op(b) + beta * out0 + bias`, with `beta == 0` ignoring out0.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f64],
    b: &[f64],
    bias: Option<&[f64]>,
    out0: &[f64],
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    alpha: f64,
    beta: f64,
) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av * bv;
            }
            let mut v = alpha * s;
            if beta != 0.0 {
                v += beta * out0[i * n + j];
            }
            if let Some(bias) = bias {
                v += bias[j];
            }
            out[i * n + j] = v;
        }
    }
    out
}

/// Causal attention; returns (out [B,T,C], att [B,NH,T,T]).
pub fn attention(qkv: &[f64], bsz: usize, t: usize, c: usize, nh: usize) -> (Vec<f64>, Vec<f64>) {
    attention_gqa(qkv, bsz, t, nh, nh, c / nh, 0, None)
}

/// Grouped-query causal attention over `qkv [B,T,(nh+2nkv)*hd]`, optionally
/// windowed (`window > 0`: keys `s > t - window`) and packed (a query sees
/// only keys of its own segment); returns (out [B,T,nh*hd], att [B,nh,T,T]).
#[allow(clippy::too_many_arguments)]
pub fn attention_gqa(
    qkv: &[f64],
    bsz: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    window: usize,
    segments: Option<&[u32]>,
) -> (Vec<f64>, Vec<f64>) {
    let row = (nh + 2 * nkv) * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; bsz * t * nh * hd];
    let mut att = vec![0.0; bsz * nh * t * t];
    for b in 0..bsz {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            for i in 0..t {
                let visible = |j: usize| {
                    j <= i
                        && (window == 0 || j + window > i)
                        && segments.is_none_or(|s| s[b * t + j] == s[b * t + i])
                };
                let q = &qkv[(b * t + i) * row + h * hd..][..hd];
                let scores: Vec<Option<f64>> = (0..t)
                    .map(|j| {
                        visible(j).then(|| {
                            let k = &qkv[(b * t + j) * row + (nh + kvh) * hd..][..hd];
                            q.iter().zip(k).map(|(x, y)| x * y).sum::<f64>() * scale
                        })
                    })
                    .collect();
                let m = scores
                    .iter()
                    .flatten()
                    .cloned()
                    .fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = scores.iter().flatten().map(|v| (v - m).exp()).sum();
                for (j, sc) in scores.iter().enumerate() {
                    let Some(sc) = sc else { continue };
                    let p = (sc - m).exp() / s;
                    att[((b * nh + h) * t + i) * t + j] = p;
                    let v = &qkv[(b * t + j) * row + (nh + nkv + kvh) * hd..][..hd];
                    for d in 0..hd {
                        out[(b * t + i) * nh * hd + h * hd + d] += p * v[d];
                    }
                }
            }
        }
    }
    (out, att)
}

pub fn encoder(tokens: &[u32], wte: &[f64], wpe: &[f64], t: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; tokens.len() * c];
    for (row, &tok) in tokens.iter().enumerate() {
        for j in 0..c {
            out[row * c + j] = wte[tok as usize * c + j] + wpe[(row % t) * c + j];
        }
    }
    out
}

/// Returns (losses, probs); `lse` is `losses + logits[target]` or see [`logsumexp_rows`].
pub fn crossentropy(
    logits: &[f64],
    targets: &[u32],
    rows: usize,
    v: usize,
    vp: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut losses = vec![0.0; rows];
    let mut probs = vec![0.0; rows * vp];
    for r in 0..rows {
        let x = &logits[r * vp..][..v];
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = x.iter().map(|v| (v - m).exp()).sum();
        for j in 0..v {
            probs[r * vp + j] = (x[j] - m).exp() / s;
        }
        let tgt = targets[r] as usize;
        if tgt < v {
            losses[r] = -(x[tgt] - m - s.ln());
        }
    }
    (losses, probs)
}

/// One PyTorch AdamW step in f64 (torch.optim.AdamW, decoupled weight decay).
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    p: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
    step: u64,
) {
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = 1.0 - b2.powi(step as i32);
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        let mhat = m[i] / bc1;
        let vhat = v[i] / bc2;
        p[i] -= lr * mhat / (vhat.sqrt() + eps);
    }
}

/// Log-sum-exp of the first `v` columns of every row of `[rows, vp]`.
pub fn logsumexp_rows(x: &[f64], rows: usize, v: usize, vp: usize) -> Vec<f64> {
    (0..rows)
        .map(|r| {
            let x = &x[r * vp..][..v];
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
        })
        .collect()
}

/// RMSNorm: returns (out, rstd).
pub fn rmsnorm(x: &[f64], w: &[f64], rows: usize, cols: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; rows * cols];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let row = &x[r * cols..][..cols];
        let s = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / cols as f64 + eps).sqrt();
        for j in 0..cols {
            out[r * cols + j] = row[j] * s * w[j];
        }
        rstd[r] = s;
    }
    (out, rstd)
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

/// Half-split RoPE of `n_heads` heads at `col_offset` of rows `[B*T, width]`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &[f64],
    cos: &[f64],
    sin: &[f64],
    pos: &[usize],
    width: usize,
    col_offset: usize,
    n_heads: usize,
    hd: usize,
    inverse: bool,
) -> Vec<f64> {
    let half = hd / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    let mut out = x.to_vec();
    for (row, &p) in pos.iter().enumerate() {
        for h in 0..n_heads {
            let base = row * width + col_offset + h * hd;
            for j in 0..half {
                let (a, b) = (x[base + j], x[base + j + half]);
                let (c, s) = (cos[p * half + j], sign * sin[p * half + j]);
                out[base + j] = a * c - b * s;
                out[base + j + half] = b * c + a * s;
            }
        }
    }
    out
}

/// Row softmax; returns (out, lse).
pub fn softmax(x: &[f64], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; rows * cols];
    let lse = logsumexp_rows(x, rows, cols, cols);
    for r in 0..rows {
        for j in 0..cols {
            out[r * cols + j] = (x[r * cols + j] - lse[r]).exp();
        }
    }
    (out, lse)
}

/// Analytic gradient of [`attention_gqa`]'s `out` weighted by `dout`
/// (`sum(dout * out)`), w.r.t. `qkv`: the softmax backward in f64, for shapes
/// too large for central differences.
#[allow(clippy::too_many_arguments)]
pub fn attention_gqa_backward(
    qkv: &[f64],
    dout: &[f64],
    bsz: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    window: usize,
    segments: Option<&[u32]>,
) -> Vec<f64> {
    let row = (nh + 2 * nkv) * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let (_, att) = attention_gqa(qkv, bsz, t, nh, nkv, hd, window, segments);
    let mut d = vec![0.0; qkv.len()];
    for b in 0..bsz {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let (qo, ko, vo) = (h * hd, (nh + kvh) * hd, (nh + nkv + kvh) * hd);
            for i in 0..t {
                let p = &att[((b * nh + h) * t + i) * t..][..t];
                let go = &dout[(b * t + i) * nh * hd + h * hd..][..hd];
                let dp: Vec<f64> = (0..t)
                    .map(|j| {
                        let v = &qkv[(b * t + j) * row + vo..][..hd];
                        go.iter().zip(v).map(|(x, y)| x * y).sum()
                    })
                    .collect();
                let dsum: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..t {
                    if p[j] == 0.0 {
                        continue;
                    }
                    let ds = p[j] * (dp[j] - dsum) * scale;
                    for x in 0..hd {
                        let (qi, kj) = ((b * t + i) * row + qo + x, (b * t + j) * row + ko + x);
                        d[qi] += ds * qkv[kj];
                        d[kj] += ds * qkv[qi];
                        d[(b * t + j) * row + vo + x] += p[j] * go[x];
                    }
                }
            }
        }
    }
    d
}
