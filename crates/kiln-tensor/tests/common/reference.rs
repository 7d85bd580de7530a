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
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut out = vec![0.0; bsz * t * c];
    let mut att = vec![0.0; bsz * nh * t * t];
    for b in 0..bsz {
        for h in 0..nh {
            for i in 0..t {
                let q = &qkv[(b * t + i) * 3 * c + h * hs..][..hs];
                let mut scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let k = &qkv[(b * t + j) * 3 * c + c + h * hs..][..hs];
                        q.iter().zip(k).map(|(x, y)| x * y).sum::<f64>() * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = scores
                    .iter_mut()
                    .map(|v| {
                        *v = (*v - m).exp();
                        *v
                    })
                    .sum();
                for (j, p) in scores.iter().enumerate() {
                    let p = p / s;
                    att[((b * nh + h) * t + i) * t + j] = p;
                    let v = &qkv[(b * t + j) * 3 * c + 2 * c + h * hs..][..hs];
                    for d in 0..hs {
                        out[(b * t + i) * c + h * hs + d] += p * v[d];
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

/// Returns (losses, probs).
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
