//! Shared test helpers: a seeded generator, f64 reference implementations of
//! every op, central-difference gradients and tolerance checks.
#![allow(dead_code)]

pub mod reference;

use kiln_abi::{BackendBox, BackendExt, BufId, DType};

/// SplitMix64: tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Central-difference gradient of `f` at `x` (f64 throughout).
pub fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let fp = f(&xp);
            xp[i] = orig - h;
            let fm = f(&xp);
            xp[i] = orig;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// `sum(r * y)`: the scalar whose gradient w.r.t. `y` is `r`.
pub fn weighted_sum(r: &[f64], y: &[f64]) -> f64 {
    r.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w} (|err| = {err:e})"
        );
    }
}

pub fn backend(threads: usize) -> BackendBox {
    kiln_tensor::cpu_backend(Some(threads))
}

pub fn upload(be: &mut BackendBox, data: &[f32]) -> BufId {
    be.from_f32(data).expect("upload")
}

pub fn zeros(be: &mut BackendBox, n: usize) -> BufId {
    be.alloc_buf(DType::F32, n).expect("alloc")
}

pub fn download(be: &mut BackendBox, id: BufId) -> Vec<f32> {
    be.download_f32(id).expect("download")
}

/// `base + delta` in f64, for checking that backward ops accumulate.
pub fn plus(base: &[f32], delta: &[f64]) -> Vec<f64> {
    base.iter()
        .zip(delta)
        .map(|(&b, &d)| b as f64 + d)
        .collect()
}

// ---- thin wrappers over the ABI-2 argument structs, for short call sites ----

use kiln_abi::{
    AttentionArgs, AttentionBackwardArgs, AttentionShape, EmbeddingArgs, EmbeddingBackwardArgs,
    KvAttentionArgs, MatmulArgs, NormArgs, NormBackwardArgs, NormKind, RResult, RString,
};

pub type R = RResult<(), RString>;

/// `out = alpha * op(a) @ op(b) + beta * out (+ bias)`, packed.
#[allow(clippy::too_many_arguments)]
pub fn mm_args(
    out: BufId,
    a: BufId,
    b: BufId,
    bias: Option<BufId>,
    (m, n, k): (usize, usize, usize),
    ta: bool,
    tb: bool,
    alpha: f32,
    beta: f32,
) -> MatmulArgs {
    MatmulArgs {
        bias: bias.into(),
        trans_a: ta,
        trans_b: tb,
        alpha,
        beta,
        ..MatmulArgs::new(out, a, b, m, n, k)
    }
}

/// Multi-head attention shape (`nkv == nh`, no window), as GPT-2 uses it.
pub fn mha(b: usize, t: usize, c: usize, nh: usize) -> AttentionShape {
    AttentionShape {
        b,
        t,
        nh,
        nkv: nh,
        hd: c / nh,
        window: 0,
    }
}

/// An attention workspace of the size the backend asks for.
pub fn workspace(be: &mut BackendBox, s: AttentionShape) -> BufId {
    let len = be
        .attention_workspace_len(s)
        .expect("attention_workspace_len");
    zeros(be, len)
}

pub fn scale_of(s: AttentionShape) -> f32 {
    1.0 / (s.hd as f32).sqrt()
}

pub fn attn_fwd(
    be: &mut BackendBox,
    out: BufId,
    ws: BufId,
    qkv: BufId,
    seg: Option<BufId>,
    s: AttentionShape,
) -> R {
    be.attention_forward(AttentionArgs {
        out,
        workspace: ws,
        qkv,
        segments: seg.into(),
        shape: s,
        scale: scale_of(s),
    })
}

#[allow(clippy::too_many_arguments)]
pub fn attn_bwd(
    be: &mut BackendBox,
    dqkv: BufId,
    dout: BufId,
    qkv: BufId,
    out: BufId,
    ws: BufId,
    seg: Option<BufId>,
    s: AttentionShape,
) -> R {
    be.attention_backward(AttentionBackwardArgs {
        dqkv,
        dout,
        qkv,
        out,
        workspace: ws,
        segments: seg.into(),
        shape: s,
        scale: scale_of(s),
    })
}

#[allow(clippy::too_many_arguments)]
pub fn kv_fwd(
    be: &mut BackendBox,
    out: BufId,
    qkv: BufId,
    kc: BufId,
    vc: BufId,
    s: AttentionShape,
    t_past: usize,
    t_max: usize,
) -> R {
    be.attention_kv_forward(KvAttentionArgs {
        out,
        qkv,
        k_cache: kc,
        v_cache: vc,
        shape: s,
        t_past,
        t_max,
        scale: scale_of(s),
    })
}

/// Token + position embedding: `positions` given, or `pos0 + t`.
#[allow(clippy::too_many_arguments)]
pub fn embed(
    be: &mut BackendBox,
    out: BufId,
    tokens: BufId,
    wte: BufId,
    wpe: Option<BufId>,
    positions: Option<BufId>,
    pos0: usize,
    (b, t, c): (usize, usize, usize),
) -> R {
    be.embedding_forward(EmbeddingArgs {
        out,
        tokens,
        wte,
        wpe: wpe.into(),
        positions: positions.into(),
        pos0,
        b,
        t,
        c,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn embed_bwd(
    be: &mut BackendBox,
    dwte: Option<BufId>,
    dwpe: Option<BufId>,
    dout: BufId,
    tokens: BufId,
    positions: Option<BufId>,
    pos0: usize,
    (b, t, c): (usize, usize, usize),
) -> R {
    be.embedding_backward(EmbeddingBackwardArgs {
        dwte: dwte.into(),
        dwpe: dwpe.into(),
        dout,
        tokens,
        positions: positions.into(),
        pos0,
        b,
        t,
        c,
    })
}

/// LayerNorm forward (no fused residual).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd(
    be: &mut BackendBox,
    out: BufId,
    mean: BufId,
    rstd: BufId,
    inp: BufId,
    w: BufId,
    b: BufId,
    rows: usize,
    cols: usize,
    eps: f32,
) -> R {
    be.norm_forward(NormArgs {
        kind: NormKind::LayerNorm,
        out,
        mean: Some(mean).into(),
        rstd,
        inp,
        weight: w,
        bias: Some(b).into(),
        residual: None.into(),
        residual_out: None.into(),
        rows,
        cols,
        eps,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(
    be: &mut BackendBox,
    dinp: BufId,
    dw: BufId,
    db: BufId,
    dout: BufId,
    inp: BufId,
    w: BufId,
    mean: BufId,
    rstd: BufId,
    rows: usize,
    cols: usize,
) -> R {
    be.norm_backward(NormBackwardArgs {
        kind: NormKind::LayerNorm,
        dinp,
        dweight: Some(dw).into(),
        dbias: Some(db).into(),
        dout,
        inp,
        weight: w,
        mean: Some(mean).into(),
        rstd,
        rows,
        cols,
    })
}

/// Downloads any float buffer as f32.
pub fn widened(be: &mut BackendBox, id: BufId) -> Vec<f32> {
    be.download_widened(id).expect("download")
}

/// Uploads `data` rounded into a new buffer of `dtype` (f32, bf16 or f16);
/// returns the id and the values it holds.
pub fn upload_as(be: &mut BackendBox, dtype: DType, data: &[f32]) -> (BufId, Vec<f32>) {
    let id = be.alloc_buf(dtype, data.len()).unwrap();
    let held: Vec<f32> = match dtype {
        DType::F32 => {
            be.upload_f32(id, data).unwrap();
            data.to_vec()
        }
        DType::BF16 => {
            let h: Vec<half::bf16> = data.iter().map(|&x| half::bf16::from_f32(x)).collect();
            be.upload_bf16(id, &h).unwrap();
            h.iter().map(|x| x.to_f32()).collect()
        }
        DType::F16 => {
            let h: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
            be.upload_f16(id, &h).unwrap();
            h.iter().map(|x| x.to_f32()).collect()
        }
        DType::U32 => panic!("upload_as: floats only"),
    };
    (id, held)
}
