//! Contract tests over random shapes: every op accepts correctly sized
//! buffers and writes finite values; an undersized buffer, a wrong dtype or
//! an unknown id is an `Err` naming the op (never a panic); uploads, downloads
//! and casts round-trip; outputs overlapping other operands (also through
//! views) and views of freed buffers are errors.

mod common;

use common::Rng;
use half::{bf16, f16};
use kiln_abi::stats::STAT_SLOTS;
use kiln_abi::{
    AdamWArgs, AttentionArgs, AttentionBackwardArgs, AttentionShape, BackendBox, BackendExt, BufId,
    DType, EmbeddingArgs, EmbeddingBackwardArgs, Epilogue, IntoBResult, KvAttentionArgs,
    MatmulArgs, NormArgs, NormBackwardArgs, NormKind, RResult, RString, Reduce, RopeArgs, Rounding,
    Unary,
};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    v: usize,
    vp: usize,
}

impl Dims {
    /// Grouped-query shape with one key/value head (or multi-head when `mha`).
    fn shape(&self, mha: bool) -> AttentionShape {
        AttentionShape {
            b: self.b,
            t: self.t,
            nh: self.nh,
            nkv: if mha { self.nh } else { 1 },
            hd: self.c / self.nh,
            window: if mha { 0 } else { 2 },
        }
    }
    fn qkv(&self, mha: bool) -> usize {
        let s = self.shape(mha);
        s.b * s.t * (s.nh + 2 * s.nkv) * s.hd
    }
}

type Call = fn(&mut BackendBox, &[BufId], Dims) -> RResult<(), RString>;

/// One op: its arguments (name, dtype, exact length) and how to call it.
struct Case {
    op: &'static str,
    args: Vec<(&'static str, DType, usize)>,
    call: Call,
}

/// `out[BT,Vp] = a @ b + 0.5 out + bias` with `a`, `b` transposed as asked.
fn mm(be: &mut BackendBox, ids: &[BufId], d: Dims, ta: bool, tb: bool) -> RResult<(), RString> {
    be.matmul(MatmulArgs {
        bias: Some(ids[3]).into(),
        trans_a: ta,
        trans_b: tb,
        beta: 0.5,
        ..MatmulArgs::new(ids[0], ids[1], ids[2], d.b * d.t, d.vp, d.c)
    })
}

fn att(i: &[BufId], d: Dims, mha: bool, seg: bool) -> AttentionArgs {
    let s = d.shape(mha);
    AttentionArgs {
        out: i[0],
        workspace: i[1],
        qkv: i[2],
        segments: if seg { Some(i[3]) } else { None }.into(),
        shape: s,
        scale: 0.5,
    }
}

fn adamw(i: &[BufId], d: Dims, extra: bool) -> AdamWArgs {
    AdamWArgs {
        params: i[0],
        grads: i[1],
        m: i[2],
        v: i[3],
        params_16: if extra { Some(i[4]) } else { None }.into(),
        rounding: Rounding::Stochastic,
        seed: 5,
        n: d.b * d.t * d.c,
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_scale: 1.0,
        control: if extra { Some(i[5]) } else { None }.into(),
        step: 3,
    }
}

fn norm(i: &[BufId], d: Dims, kind: NormKind) -> NormArgs {
    let ln = kind == NormKind::LayerNorm;
    // LayerNorm: out mean rstd inp weight bias; RMSNorm: out rstd inp weight residual residual_out.
    NormArgs {
        kind,
        out: i[0],
        mean: if ln { Some(i[1]) } else { None }.into(),
        rstd: i[if ln { 2 } else { 1 }],
        inp: i[if ln { 3 } else { 2 }],
        weight: i[if ln { 4 } else { 3 }],
        bias: if ln { Some(i[5]) } else { None }.into(),
        residual: if ln { None } else { Some(i[4]) }.into(),
        residual_out: if ln { None } else { Some(i[5]) }.into(),
        rows: d.b * d.t,
        cols: d.c,
        eps: 1e-5,
    }
}

fn cases(d: Dims) -> Vec<Case> {
    use DType::{BF16, F16, F32, U32};
    let Dims {
        b, t, c, nh, vp, ..
    } = d;
    let (bt, btc) = (b * t, b * t * c);
    let half = (c / nh).div_ceil(2);
    vec![
        Case {
            op: "embedding_forward",
            args: vec![
                ("out", F32, btc),
                ("tokens", U32, bt),
                ("wte", BF16, vp * c),
                ("wpe", F32, (t + 2) * c),
            ],
            // positions 2..2+T: wpe holds T+2 rows
            call: |be, i, d| {
                be.embedding_forward(EmbeddingArgs {
                    out: i[0],
                    tokens: i[1],
                    wte: i[2],
                    wpe: Some(i[3]).into(),
                    positions: None.into(),
                    pos0: 2,
                    b: d.b,
                    t: d.t,
                    c: d.c,
                })
            },
        },
        Case {
            op: "embedding_forward",
            args: vec![
                ("out", F16, btc),
                ("tokens", U32, bt),
                ("positions", U32, bt),
                ("wte", F32, vp * c),
                ("wpe", F32, t * c),
            ],
            call: |be, i, d| {
                be.embedding_forward(EmbeddingArgs {
                    out: i[0],
                    tokens: i[1],
                    positions: Some(i[2]).into(),
                    wte: i[3],
                    wpe: Some(i[4]).into(),
                    pos0: 0,
                    b: d.b,
                    t: d.t,
                    c: d.c,
                })
            },
        },
        Case {
            op: "embedding_backward",
            args: vec![
                ("dwte", F32, vp * c),
                ("dwpe", BF16, t * c),
                ("dout", F32, btc),
                ("tokens", U32, bt),
                ("positions", U32, bt),
            ],
            call: |be, i, d| {
                be.embedding_backward(EmbeddingBackwardArgs {
                    dwte: Some(i[0]).into(),
                    dwpe: Some(i[1]).into(),
                    dout: i[2],
                    tokens: i[3],
                    positions: Some(i[4]).into(),
                    pos0: 0,
                    b: d.b,
                    t: d.t,
                    c: d.c,
                })
            },
        },
        Case {
            op: "embedding_backward",
            args: vec![
                ("dwte", F32, vp * c),
                ("dout", F32, btc),
                ("tokens", U32, bt),
            ],
            call: |be, i, d| {
                be.embedding_backward(EmbeddingBackwardArgs {
                    dwte: Some(i[0]).into(),
                    dwpe: None.into(),
                    dout: i[1],
                    tokens: i[2],
                    positions: None.into(),
                    pos0: 0,
                    b: d.b,
                    t: d.t,
                    c: d.c,
                })
            },
        },
        Case {
            op: "matmul",
            args: vec![
                ("out", F32, bt * vp),
                ("a", F32, bt * c),
                ("b", F32, c * vp),
                ("bias", F32, vp),
            ],
            call: |be, i, d| mm(be, i, d, false, true),
        },
        Case {
            op: "matmul",
            args: vec![
                ("out", BF16, bt * vp),
                ("a", F16, bt * c),
                ("b", F32, c * vp),
                ("bias", BF16, vp),
            ],
            call: |be, i, d| mm(be, i, d, true, false),
        },
        Case {
            // Fused GELU, and a's rows 2 elements apart more than packed (lda).
            op: "matmul",
            args: vec![
                ("out", F32, bt * vp),
                ("a", F32, (bt - 1) * (c + 2) + c),
                ("b", F32, c * vp),
                ("bias", F32, vp),
                ("pre_act", F32, bt * vp),
            ],
            call: |be, i, d| {
                be.matmul(MatmulArgs {
                    bias: Some(i[3]).into(),
                    lda: d.c + 2,
                    epilogue: Epilogue::Gelu,
                    pre_act: Some(i[4]).into(),
                    ..MatmulArgs::new(i[0], i[1], i[2], d.b * d.t, d.vp, d.c)
                })
            },
        },
        Case {
            op: "bias_backward",
            args: vec![("dbias", F32, c), ("dout", F32, btc)],
            call: |be, i, d| be.bias_backward(i[0], i[1], d.b * d.t, d.c),
        },
        Case {
            op: "norm_forward",
            args: vec![
                ("out", F32, btc),
                ("mean", F32, bt),
                ("rstd", F32, bt),
                ("inp", F32, btc),
                ("weight", F32, c),
                ("bias", F32, c),
            ],
            call: |be, i, d| be.norm_forward(norm(i, d, NormKind::LayerNorm)),
        },
        Case {
            op: "norm_forward",
            args: vec![
                ("out", BF16, btc),
                ("rstd", F32, bt),
                ("inp", F32, btc),
                ("weight", F32, c),
                ("residual", BF16, btc),
                ("residual_out", BF16, btc),
            ],
            call: |be, i, d| be.norm_forward(norm(i, d, NormKind::RmsNorm)),
        },
        Case {
            op: "norm_backward",
            args: vec![
                ("dinp", F32, btc),
                ("dweight", F32, c),
                ("dbias", F32, c),
                ("dout", F32, btc),
                ("inp", F32, btc),
                ("weight", F32, c),
                ("mean", F32, bt),
                ("rstd", F32, bt),
            ],
            call: |be, i, d| {
                be.norm_backward(NormBackwardArgs {
                    kind: NormKind::LayerNorm,
                    dinp: i[0],
                    dweight: Some(i[1]).into(),
                    dbias: Some(i[2]).into(),
                    dout: i[3],
                    inp: i[4],
                    weight: i[5],
                    mean: Some(i[6]).into(),
                    rstd: i[7],
                    rows: d.b * d.t,
                    cols: d.c,
                })
            },
        },
        Case {
            op: "norm_backward",
            args: vec![
                ("dinp", F16, btc),
                ("dweight", F32, c),
                ("dout", F32, btc),
                ("inp", F32, btc),
                ("weight", F32, c),
                ("rstd", F32, bt),
            ],
            call: |be, i, d| {
                be.norm_backward(NormBackwardArgs {
                    kind: NormKind::RmsNorm,
                    dinp: i[0],
                    dweight: Some(i[1]).into(),
                    dbias: None.into(),
                    dout: i[2],
                    inp: i[3],
                    weight: i[4],
                    mean: None.into(),
                    rstd: i[5],
                    rows: d.b * d.t,
                    cols: d.c,
                })
            },
        },
        Case {
            // All heads of a [B*T, C] buffer (head_dim rounded up to even: C = nh * 2*half).
            op: "rope",
            args: vec![
                ("buf", F32, bt * nh * 2 * half),
                ("cos", F32, t * half),
                ("sin", F32, t * half),
                ("positions", U32, bt),
            ],
            call: |be, i, d| {
                let half = (d.c / d.nh).div_ceil(2);
                be.rope(RopeArgs {
                    buf: i[0],
                    cos: i[1],
                    sin: i[2],
                    positions: Some(i[3]).into(),
                    pos0: 0,
                    b: d.b,
                    t: d.t,
                    row_width: d.nh * 2 * half,
                    col_offset: 0,
                    n_heads: d.nh,
                    head_dim: 2 * half,
                    inverse: true,
                })
            },
        },
        Case {
            op: "unary_forward",
            args: vec![("out", F32, btc), ("inp", BF16, btc)],
            call: |be, i, d| be.unary_forward(Unary::Gelu, i[0], i[1], d.b * d.t * d.c),
        },
        Case {
            op: "unary_backward",
            args: vec![("dinp", F32, btc), ("inp", F32, btc), ("dout", F32, btc)],
            call: |be, i, d| be.unary_backward(Unary::Silu, i[0], i[1], i[2], d.b * d.t * d.c),
        },
        Case {
            op: "swiglu_forward",
            args: vec![("out", F32, btc), ("inp", F32, 2 * btc)],
            call: |be, i, d| be.swiglu_forward(i[0], i[1], d.b * d.t, d.c),
        },
        Case {
            op: "swiglu_backward",
            args: vec![
                ("dinp", F32, 2 * btc),
                ("inp", F32, 2 * btc),
                ("dout", F32, btc),
            ],
            call: |be, i, d| be.swiglu_backward(i[0], i[1], i[2], d.b * d.t, d.c),
        },
        // The CPU attention workspace: 2 statistics per (batch, head, query).
        Case {
            op: "attention_forward",
            args: vec![
                ("out", F32, btc),
                ("workspace", F32, b * nh * t * 2),
                ("qkv", F32, d.qkv(true)),
            ],
            call: |be, i, d| be.attention_forward(att(i, d, true, false)),
        },
        Case {
            op: "attention_forward",
            args: vec![
                ("out", BF16, btc),
                ("workspace", F32, b * nh * t * 2),
                ("qkv", BF16, d.qkv(false)),
                ("segments", U32, bt),
            ],
            call: |be, i, d| be.attention_forward(att(i, d, false, true)),
        },
        Case {
            op: "attention_backward",
            args: vec![
                ("dqkv", F32, d.qkv(false)),
                ("dout", F32, btc),
                ("qkv", F32, d.qkv(false)),
                ("out", F32, btc),
                ("workspace", F32, b * nh * t * 2),
            ],
            call: |be, i, d| {
                let a = att(&[i[3], i[4], i[2]], d, false, false);
                be.attention_backward(AttentionBackwardArgs {
                    dqkv: i[0],
                    dout: i[1],
                    qkv: i[2],
                    out: i[3],
                    workspace: i[4],
                    segments: None.into(),
                    shape: a.shape,
                    scale: a.scale,
                })
            },
        },
        Case {
            op: "attention_kv_forward",
            args: vec![
                ("out", F32, btc),
                ("qkv", F32, d.qkv(false)),
                ("k_cache", F32, b * (t + 2) * (c / nh)),
                ("v_cache", F32, b * (t + 2) * (c / nh)),
            ],
            // t new positions after 2 cached ones, cache length t + 2, one kv head.
            call: |be, i, d| {
                be.attention_kv_forward(KvAttentionArgs {
                    out: i[0],
                    qkv: i[1],
                    k_cache: i[2],
                    v_cache: i[3],
                    shape: d.shape(false),
                    t_past: 2,
                    t_max: d.t + 2,
                    scale: 0.5,
                })
            },
        },
        Case {
            op: "crossentropy_forward",
            args: vec![
                ("losses", F32, bt),
                ("lse", F32, bt),
                ("logits", F32, bt * vp),
                ("targets", U32, bt),
            ],
            call: |be, i, d| be.crossentropy_forward(i[0], i[1], i[2], i[3], d.b * d.t, d.v, d.vp),
        },
        Case {
            op: "crossentropy_backward",
            args: vec![
                ("dlogits", F32, bt * vp),
                ("logits", BF16, bt * vp),
                ("lse", F32, bt),
                ("targets", U32, bt),
                ("dlosses", F32, bt),
            ],
            call: |be, i, d| {
                be.crossentropy_backward(i[0], i[1], i[2], i[3], i[4], d.b * d.t, d.v, d.vp)
            },
        },
        Case {
            op: "softmax_forward",
            args: vec![
                ("out", F32, bt * vp),
                ("lse", F32, bt),
                ("inp", F32, bt * vp),
            ],
            call: |be, i, d| be.softmax_forward(i[0], Some(i[1]).into(), i[2], d.b * d.t, d.vp),
        },
        Case {
            op: "softmax_backward",
            args: vec![
                ("dinp", F32, bt * vp),
                ("out", F32, bt * vp),
                ("dout", F32, bt * vp),
                ("dlse", F32, bt),
            ],
            call: |be, i, d| {
                be.softmax_backward(i[0], i[1], i[2], Some(i[3]).into(), d.b * d.t, d.vp)
            },
        },
        Case {
            op: "topk_forward",
            args: vec![
                ("values", F32, bt * d.v.min(vp)),
                ("indices", U32, bt * d.v.min(vp)),
                ("scores", F32, bt * vp),
                ("bias", F32, vp),
            ],
            call: |be, i, d| {
                be.topk_forward(
                    i[0],
                    i[1],
                    i[2],
                    Some(i[3]).into(),
                    d.b * d.t,
                    d.vp,
                    d.v.min(d.vp),
                )
            },
        },
        Case {
            op: "topk_backward",
            args: vec![
                ("dscores", F32, bt * vp),
                ("dvalues", F32, bt * 2),
                ("indices", U32, bt * 2),
            ],
            call: |be, i, d| be.topk_backward(i[0], i[1], i[2], d.b * d.t, d.vp, 2),
        },
        Case {
            op: "normalize_rows_forward",
            args: vec![("out", F32, bt * c), ("inp", F32, bt * c)],
            call: |be, i, d| be.normalize_rows_forward(i[0], i[1], d.b * d.t, d.c),
        },
        Case {
            op: "normalize_rows_backward",
            args: vec![
                ("dinp", F32, bt * c),
                ("inp", F32, bt * c),
                ("out", F32, bt * c),
                ("dout", F32, bt * c),
            ],
            call: |be, i, d| be.normalize_rows_backward(i[0], i[1], i[2], i[3], d.b * d.t, d.c),
        },
        Case {
            op: "gather_rows",
            args: vec![
                ("out", BF16, bt * c),
                ("src", F32, vp * c),
                ("indices", U32, bt),
            ],
            call: |be, i, d| be.gather_rows(i[0], i[1], i[2], d.b * d.t, d.c),
        },
        Case {
            op: "scatter_add_rows",
            args: vec![
                ("dst", F32, vp * c),
                ("src", F16, bt * c),
                ("indices", U32, bt),
                ("weights", F32, bt),
            ],
            call: |be, i, d| {
                be.scatter_add_rows(i[0], i[1], i[2], Some(i[3]).into(), d.b * d.t, d.c)
            },
        },
        Case {
            op: "rows_dot",
            args: vec![
                ("out", F32, bt),
                ("a", F32, vp * c),
                ("a_indices", U32, bt),
                ("b", F32, bt * c),
            ],
            call: |be, i, d| be.rows_dot(i[0], i[1], Some(i[2]).into(), i[3], d.b * d.t, d.c),
        },
        Case {
            op: "index_counts",
            args: vec![("counts", F32, vp), ("indices", U32, bt)],
            call: |be, i, d| be.index_counts(i[0], i[1], d.b * d.t, d.vp),
        },
        Case {
            op: "add",
            args: vec![("out", F32, btc), ("a", F32, btc), ("b", F16, btc)],
            call: |be, i, d| be.add(i[0], i[1], i[2], d.b * d.t * d.c),
        },
        Case {
            op: "axpy",
            args: vec![("dst", BF16, btc), ("src", F32, btc)],
            call: |be, i, d| be.axpy(i[0], i[1], d.b * d.t * d.c, 0.5),
        },
        Case {
            op: "scale",
            args: vec![("buf", F32, btc)],
            call: |be, i, d| be.scale(i[0], d.b * d.t * d.c, 0.5),
        },
        Case {
            op: "copy",
            args: vec![("dst", F32, btc), ("src", F32, btc)],
            call: |be, i, d| be.copy(i[0], i[1], d.b * d.t * d.c),
        },
        Case {
            op: "cast",
            args: vec![("dst", BF16, btc), ("src", F32, btc)],
            call: |be, i, d| be.cast(i[0], i[1], d.b * d.t * d.c, Rounding::Stochastic, 9),
        },
        Case {
            op: "reduce",
            args: vec![("dst", F32, 3), ("src", BF16, btc)],
            call: |be, i, d| be.reduce(Reduce::SumSquares, i[0], 2, i[1], d.b * d.t * d.c),
        },
        Case {
            op: "step_control",
            args: vec![("stats", F32, STAT_SLOTS)],
            call: |be, i, _| be.step_control(i[0], 1.0, 0.5),
        },
        Case {
            op: "adamw",
            args: vec![
                ("params", F32, btc),
                ("grads", F32, btc),
                ("m", F32, btc),
                ("v", F32, btc),
            ],
            call: |be, i, d| be.adamw(adamw(i, d, false)),
        },
        Case {
            op: "adamw",
            args: vec![
                ("params", F32, btc),
                ("grads", BF16, btc),
                ("m", F32, btc),
                ("v", F32, btc),
                ("params_16", BF16, btc),
                ("control", F32, STAT_SLOTS),
            ],
            call: |be, i, d| be.adamw(adamw(i, d, true)),
        },
    ]
}

/// Allocates the case's buffers with random contents (tokens/targets valid,
/// some targets ignored; variances positive for layernorm's `rstd`).
fn alloc_args(
    be: &mut BackendBox,
    case: &Case,
    d: Dims,
    rng: &mut Rng,
    lens: &[usize],
    dtypes: &[DType],
) -> Vec<BufId> {
    case.args
        .iter()
        .zip(lens.iter().zip(dtypes))
        .map(|(&(name, _, _), (&len, &dtype))| {
            let id = be.alloc_buf(dtype, len).unwrap();
            match dtype {
                DType::U32 => {
                    let hi = match name {
                        "targets" => d.v as u32 + 2,
                        // wpe (and the RoPE tables) hold T rows in every case that takes positions.
                        "positions" | "segments" => d.t as u32,
                        // Token rows, expert rows, score columns: Vp of them.
                        _ => d.vp as u32,
                    };
                    let mut data: Vec<u32> = (0..len).map(|_| rng.below(hi)).collect();
                    if let Some(first) = data.first_mut() {
                        // Use the last embedding (or position) row, so an undersized table is caught.
                        *first = hi - 1;
                    }
                    be.upload_u32(id, &data).unwrap();
                }
                float => {
                    let mut data = rng.vec(len, 1.0);
                    let positive =
                        name == "rstd" || name == "v" || case.op.starts_with("normalize_rows");
                    if positive {
                        data.iter_mut().for_each(|x| *x = x.abs() + 0.1);
                    }
                    if name == "lse" {
                        data.iter_mut().for_each(|x| *x += 3.0);
                    }
                    if name == "stats" || name == "control" {
                        // loss, sum of squares finite; skip flag 0 or 1.
                        data[1] = data[1].abs();
                        data[3] = (data[3] > 0.0) as u32 as f32;
                    }
                    match float {
                        DType::BF16 => be
                            .upload_bf16(
                                id,
                                &data.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(),
                            )
                            .unwrap(),
                        DType::F16 => be
                            .upload_f16(
                                id,
                                &data.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
                            )
                            .unwrap(),
                        _ => be.upload_f32(id, &data).unwrap(),
                    }
                }
            }
            id
        })
        .collect()
}

fn dims() -> impl Strategy<Value = Dims> {
    (
        1usize..3,
        1usize..9,
        1usize..4,
        1usize..4,
        1usize..20,
        0usize..5,
    )
        .prop_map(|(b, t, hs, nh, v, pad)| Dims {
            b,
            t,
            c: hs * nh,
            nh,
            v,
            vp: v + pad,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn valid_arguments_give_finite_outputs(d in dims(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut be = kiln_tensor::cpu_backend(Some(2));
        for case in cases(d) {
            let lens: Vec<usize> = case.args.iter().map(|a| a.2).collect();
            let dtypes: Vec<DType> = case.args.iter().map(|a| a.1).collect();
            let ids = alloc_args(&mut be, &case, d, &mut rng, &lens, &dtypes);
            let r = (case.call)(&mut be, &ids, d).ok_or_err();
            prop_assert!(r.is_ok(), "{} {d:?}: {r:?}", case.op);
            for (id, &(name, dtype, len)) in ids.iter().zip(&case.args) {
                let info = be.buffer_info(*id).unwrap();
                prop_assert_eq!(info.len, len, "{} changed the length of {}", case.op, name);
                if dtype.is_float() {
                    let data = be.download_widened(*id).unwrap();
                    prop_assert!(data.iter().all(|x| x.is_finite()), "{}: `{}` not finite {d:?}", case.op, name);
                }
                be.free(*id).unwrap();
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors_never_panics(d in dims(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut be = kiln_tensor::cpu_backend(Some(2));
        for case in cases(d) {
            let lens: Vec<usize> = case.args.iter().map(|a| a.2).collect();
            let dtypes: Vec<DType> = case.args.iter().map(|a| a.1).collect();
            for arg in 0..case.args.len() {
                let (name, dtype, len) = case.args[arg];
                // Undersized (where the op needs at least one element).
                if len > 0 {
                    let mut l = lens.clone();
                    l[arg] = len - 1;
                    let ids = alloc_args(&mut be, &case, d, &mut rng, &l, &dtypes);
                    let err = (case.call)(&mut be, &ids, d).ok_or_err().unwrap_err().0;
                    prop_assert!(err.contains(case.op) && err.contains(name), "undersized {name}: {err}");
                }
                // Wrong dtype.
                let mut t = dtypes.clone();
                t[arg] = if dtype == DType::U32 { DType::F32 } else { DType::U32 };
                let ids = alloc_args(&mut be, &case, d, &mut rng, &lens, &t);
                let err = (case.call)(&mut be, &ids, d).ok_or_err().unwrap_err().0;
                prop_assert!(err.contains(case.op) && err.contains(name), "dtype of {name}: {err}");
                // Unknown (freed) id.
                let mut ids = alloc_args(&mut be, &case, d, &mut rng, &lens, &dtypes);
                be.free(ids[arg]).unwrap();
                ids[arg] = BufId(ids[arg].0 + 1_000_000);
                let err = (case.call)(&mut be, &ids, d).ok_or_err().unwrap_err().0;
                prop_assert!(err.contains("unknown buffer"), "unknown {name}: {err}");
                // Every argument still exists after the failed calls (outputs
                // taken out for an op are always put back).
                for (i, id) in ids.iter().enumerate() {
                    if i != arg {
                        prop_assert!(be.buffer_info(*id).into_result().is_ok());
                    }
                }
            }
        }
    }

    #[test]
    fn upload_download_round_trip_every_dtype(len in 0usize..300, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let f: Vec<f32> = rng.vec(len, 100.0);
        let id = be.from_f32(&f).unwrap();
        prop_assert_eq!(be.download_f32(id).unwrap(), f.clone());
        let u: Vec<u32> = (0..len).map(|_| rng.next_u64() as u32).collect();
        let id = be.from_u32(&u).unwrap();
        prop_assert_eq!(be.download_u32(id).unwrap(), u);
        let h: Vec<bf16> = f.iter().map(|&x| bf16::from_f32(x)).collect();
        let id = be.alloc_buf(DType::BF16, len).unwrap();
        be.upload_bf16(id, &h).unwrap();
        prop_assert_eq!(be.download_bf16(id).unwrap(), h);
        let h: Vec<f16> = f.iter().map(|&x| f16::from_f32(x)).collect();
        let id = be.alloc_buf(DType::F16, len).unwrap();
        be.upload_f16(id, &h).unwrap();
        prop_assert_eq!(be.download_f16(id).unwrap(), h);
        // A byte count that does not match the buffer is an error.
        let r = be.upload(id, kiln_abi::RSlice::from_slice(&[0u8; 3]));
        prop_assert!(r.is_err());
    }

    #[test]
    fn casts_round_trip_like_half(len in 1usize..300, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let f: Vec<f32> = rng.vec(len, 1000.0);
        let src = be.from_f32(&f).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let narrow = be.alloc_buf(dtype, len).unwrap();
            let back = be.alloc_buf(DType::F32, len).unwrap();
            be.cast(narrow, src, len, Rounding::NearestEven, 0).ok_or_err().unwrap();
            be.cast(back, narrow, len, Rounding::Stochastic, 1).ok_or_err().unwrap();
            let want: Vec<f32> = match dtype {
                DType::BF16 => f.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
                _ => f.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
            };
            let got = be.download_f32(back).unwrap();
            prop_assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
        // bf16 -> f16 goes through f32 (exact), then rounds once.
        let b = be.alloc_buf(DType::BF16, len).unwrap();
        let h = be.alloc_buf(DType::F16, len).unwrap();
        be.cast(b, src, len, Rounding::NearestEven, 0).ok_or_err().unwrap();
        be.cast(h, b, len, Rounding::NearestEven, 0).ok_or_err().unwrap();
        let want: Vec<f16> = f.iter().map(|&x| f16::from_f32(bf16::from_f32(x).to_f32())).collect();
        prop_assert_eq!(be.download_f16(h).unwrap(), want);
        // Casting into a u32 buffer or from one is an error.
        let u = be.alloc_buf(DType::U32, len).unwrap();
        prop_assert!(be.cast(u, src, len, Rounding::NearestEven, 0).is_err());
        prop_assert!(be.cast(src, u, len, Rounding::NearestEven, 0).is_err());
    }
}

#[test]
fn outputs_overlapping_inputs_are_errors_also_through_views() {
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let x = be.from_f32(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let err = be
        .unary_forward(Unary::Gelu, x, x, 4)
        .ok_or_err()
        .unwrap_err()
        .0;
    assert!(
        err.contains("unary_forward") && err.contains("overlaps"),
        "{err}"
    );
    let y = be.from_f32(&[0.0; 4]).unwrap();
    // Inputs may repeat (a + a).
    be.add(y, x, x, 4).ok_or_err().unwrap();
    assert_eq!(be.download_f32(y).unwrap(), vec![2.0, 4.0, 6.0, 8.0]);
    // Both buffers survive the refused call.
    assert_eq!(be.download_f32(x).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);

    // Views of one buffer: disjoint ones are fine, overlapping ones refused,
    // a view of a view is the same memory.
    let big = be
        .from_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        .unwrap();
    let (lo, hi) = (
        be.view_of(big, 0, 4).unwrap(),
        be.view_of(big, 4, 4).unwrap(),
    );
    be.add(hi, lo, lo, 4).ok_or_err().unwrap();
    assert_eq!(
        be.download_f32(big).unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 6.0, 8.0]
    );
    let mid = be.view_of(big, 2, 4).unwrap();
    let err = be.add(mid, lo, lo, 4).ok_or_err().unwrap_err().0;
    assert!(
        err.contains("add") && err.contains("`out`") && err.contains("overlaps"),
        "{err}"
    );
    let inner = be.view_of(mid, 1, 2).unwrap(); // elements 3..5 of big
    assert_eq!(be.download_f32(inner).unwrap(), vec![4.0, 2.0]);
    let info = be.buffer_info(inner).unwrap();
    assert_eq!(
        (info.len, info.offset, info.parent.into_option()),
        (2, 1, Some(mid))
    );
    let err = be.scale(hi, 4, 2.0).ok_or_err();
    assert!(err.is_ok());
    let err = be.axpy(inner, hi, 2, 1.0).ok_or_err().unwrap_err().0;
    assert!(err.contains("axpy") && err.contains("overlaps"), "{err}");
    // A view outside its parent is refused.
    let err = be.view(big, 6, 3).into_result().unwrap_err();
    assert!(err.contains("view") && err.contains("outside"), "{err}");

    // crossentropy_backward may run in place on the logits, but not on a
    // partly overlapping view.
    let logits = be.from_f32(&[0.5, -1.0, 2.0, 0.0, 1.0, 1.5]).unwrap();
    let (lse, losses) = (
        be.alloc_buf(DType::F32, 2).unwrap(),
        be.alloc_buf(DType::F32, 2).unwrap(),
    );
    let (tg, dl) = (
        be.from_u32(&[1, 2]).unwrap(),
        be.from_f32(&[1.0, 1.0]).unwrap(),
    );
    be.crossentropy_forward(losses, lse, logits, tg, 2, 3, 3)
        .ok_or_err()
        .unwrap();
    let shifted = be.view_of(logits, 1, 5).unwrap();
    let err = be
        .crossentropy_backward(shifted, logits, lse, tg, dl, 1, 3, 3)
        .ok_or_err()
        .unwrap_err()
        .0;
    assert!(
        err.contains("crossentropy_backward") && err.contains("overlaps"),
        "{err}"
    );
    be.crossentropy_backward(logits, logits, lse, tg, dl, 2, 3, 3)
        .ok_or_err()
        .unwrap();
}

#[test]
fn views_of_a_freed_buffer_are_errors_naming_it() {
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let buf = be.from_f32(&[1.0; 16]).unwrap();
    let v = be.view_of(buf, 4, 8).unwrap();
    let vv = be.view_of(v, 2, 2).unwrap();
    be.free_buf(v).unwrap();
    // Freeing a view leaves its parent and the views made from it usable.
    assert_eq!(be.download_f32(vv).unwrap(), vec![1.0, 1.0]);
    let direct = be.view_of(buf, 0, 4).unwrap();
    be.free_buf(buf).unwrap();
    for id in [vv, direct] {
        let err = be.scale(id, 1, 2.0).ok_or_err().unwrap_err().0;
        assert!(
            err.contains("scale")
                && err.contains(&format!("buffer {}", buf.0))
                && err.contains("freed"),
            "{err}"
        );
        let err = be.download_f32(id).unwrap_err().0;
        assert!(err.contains("freed"), "{err}");
    }
    // Ids are never reused.
    let again = be.alloc_buf(DType::F32, 16).unwrap();
    assert!(again.0 > vv.0);
    assert!(be.view(buf, 0, 1).into_result().is_err());
}

#[test]
fn host_region_is_the_buffer_memory_and_collectives_are_refused() {
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let buf = be.from_f32(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let v = be.view_of(buf, 1, 2).unwrap();
    let r = be.host_region(buf).unwrap().unwrap();
    let rv = be.host_region(v).unwrap().unwrap();
    assert_eq!((r.bytes, rv.bytes), (16, 8));
    assert_eq!(r.ptr as usize % 64, 0, "allocations are 64-byte aligned");
    assert_eq!(rv.ptr as usize, r.ptr as usize + 4);
    // SAFETY: valid until the buffer is freed or written; nothing runs meanwhile.
    let seen = unsafe { std::slice::from_raw_parts(rv.ptr as *const f32, 2) };
    assert_eq!(seen, &[2.0, 3.0]);
    let info = be.info().unwrap();
    assert!(info.host_mapped && !info.collectives);
    let err = be.comm_unique_id().into_result().unwrap_err();
    assert!(
        err.contains("not supported by the CPU backend") && err.contains("kiln-parallel"),
        "{err}"
    );
    // Every op of the trait is listed, with 16-bit support where documented.
    for op in kiln_abi::op_names().filter(|o| !o.starts_with("comm") && *o != "collective") {
        assert!(info.supports(op, DType::F32), "{op}");
    }
    assert!(info.supports("matmul", DType::BF16) && info.supports("attention_forward", DType::F16));
    assert!(!info.supports("topk_forward", DType::BF16));
    assert!(info.require("collective", DType::F32).is_err());
}

#[test]
fn bad_shapes_are_errors() {
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let f = |be: &mut BackendBox, n| be.alloc_buf(DType::F32, n).unwrap();
    let (a, b, c) = (f(&mut be, 10_000), f(&mut be, 10_000), f(&mut be, 10_000));
    // nh not a multiple of nkv.
    let shape = AttentionShape {
        b: 1,
        t: 2,
        nh: 3,
        nkv: 2,
        hd: 2,
        window: 0,
    };
    let args = AttentionArgs {
        out: a,
        workspace: c,
        qkv: b,
        segments: None.into(),
        shape,
        scale: 1.0,
    };
    let err = be.attention_forward(args).ok_or_err().unwrap_err().0;
    assert!(err.contains("nkv"), "{err}");
    assert!(be.attention_workspace_len(shape).into_result().is_err());
    let shape = AttentionShape { nh: 4, ..shape };
    assert_eq!(be.attention_workspace_len(shape).unwrap(), 4 * 2 * 2);
    // V > Vp.
    let t = be.from_u32(&[0, 1]).unwrap();
    let err = be
        .crossentropy_forward(a, c, b, t, 2, 9, 8)
        .ok_or_err()
        .unwrap_err()
        .0;
    assert!(err.contains("Vp"), "{err}");
    // Token outside the embedding table.
    let toks = be.from_u32(&[0, 5000]).unwrap();
    let wte = f(&mut be, 4 * 8);
    let e = EmbeddingArgs {
        out: a,
        tokens: toks,
        wte,
        wpe: None.into(),
        positions: None.into(),
        pos0: 0,
        b: 1,
        t: 2,
        c: 8,
    };
    let err = be.embedding_forward(e).ok_or_err().unwrap_err().0;
    assert!(err.contains("token 5000"), "{err}");
    // Overflowing dimensions.
    let err = be
        .unary_backward(Unary::Gelu, a, b, c, usize::MAX)
        .ok_or_err()
        .unwrap_err()
        .0;
    assert!(err.contains("unary_backward"), "{err}");
    let (m, r, w) = (f(&mut be, 4), f(&mut be, 4), f(&mut be, 4));
    let n = NormArgs {
        kind: NormKind::LayerNorm,
        out: a,
        mean: Some(m).into(),
        rstd: r,
        inp: b,
        weight: w,
        bias: None.into(),
        residual: None.into(),
        residual_out: None.into(),
        rows: usize::MAX / 2,
        cols: 4,
        eps: 1e-5,
    };
    let err = be.norm_forward(n).ok_or_err().unwrap_err().0;
    assert!(err.contains("overflow"), "{err}");
    // A leading dimension shorter than a row; GELU epilogue without pre_act.
    let mut mm = MatmulArgs {
        lda: 3,
        ..MatmulArgs::new(a, b, c, 2, 2, 4)
    };
    let err = be.matmul(mm).ok_or_err().unwrap_err().0;
    assert!(err.contains("lda"), "{err}");
    mm.lda = 0;
    mm.epilogue = Epilogue::Gelu;
    let err = be.matmul(mm).ok_or_err().unwrap_err().0;
    assert!(err.contains("pre_act"), "{err}");
    // topk with k > cols; index_counts with an index >= e; odd RoPE head size.
    let idx = be.from_u32(&[0, 7]).unwrap();
    let err = be
        .topk_forward(a, idx, b, None.into(), 1, 4, 5)
        .ok_or_err()
        .unwrap_err()
        .0;
    assert!(err.contains("k = 5"), "{err}");
    let err = be.index_counts(a, idx, 2, 4).ok_or_err().unwrap_err().0;
    assert!(err.contains("index_counts") && err.contains("7"), "{err}");
    let rope = RopeArgs {
        buf: a,
        cos: b,
        sin: c,
        positions: None.into(),
        pos0: 0,
        b: 1,
        t: 2,
        row_width: 6,
        col_offset: 0,
        n_heads: 2,
        head_dim: 3,
        inverse: false,
    };
    let err = be.rope(rope).ok_or_err().unwrap_err().0;
    assert!(err.contains("head_dim"), "{err}");
    // Allocation failure is an error, not an abort.
    let err = be
        .alloc(DType::F32, usize::MAX / 8)
        .into_result()
        .unwrap_err();
    assert!(err.contains("alloc"), "{err}");
}
