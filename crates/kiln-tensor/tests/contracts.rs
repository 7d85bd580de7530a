//! Contract tests over random shapes: every op accepts correctly sized
//! buffers and writes finite values; an undersized buffer, a wrong dtype or
//! an unknown id is an `Err` naming the op (never a panic); uploads, downloads
//! and casts round-trip.

mod common;

use common::Rng;
use half::{bf16, f16};
use kiln_abi::{
    AdamWArgs, BackendBox, BackendExt, BufId, DType, IntoBResult, MatmulArgs, RResult, RString,
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
        out: ids[0],
        a: ids[1],
        b: ids[2],
        bias: Some(ids[3]).into(),
        m: d.b * d.t,
        n: d.vp,
        k: d.c,
        trans_a: ta,
        trans_b: tb,
        alpha: 1.0,
        beta: 0.5,
    })
}

fn cases(d: Dims) -> Vec<Case> {
    use DType::{F32, U32};
    let Dims {
        b, t, c, nh, vp, ..
    } = d;
    let (bt, btc) = (b * t, b * t * c);
    vec![
        Case {
            op: "encoder_forward",
            args: vec![
                ("out", F32, btc),
                ("tokens", U32, bt),
                ("wte", F32, vp * c),
                ("wpe", F32, t * c),
            ],
            call: |be, i, d| be.encoder_forward(i[0], i[1], i[2], i[3], d.b, d.t, d.c),
        },
        Case {
            // positions 2..2+T: wpe holds T+2 rows
            op: "encoder_forward_at",
            args: vec![
                ("out", F32, btc),
                ("tokens", U32, bt),
                ("wte", F32, vp * c),
                ("wpe", F32, (t + 2) * c),
            ],
            call: |be, i, d| be.encoder_forward_at(i[0], i[1], i[2], i[3], d.b, d.t, d.c, 2),
        },
        Case {
            op: "encoder_forward_positions",
            args: vec![
                ("out", F32, btc),
                ("tokens", U32, bt),
                ("positions", U32, bt),
                ("wte", F32, vp * c),
                ("wpe", F32, t * c),
            ],
            call: |be, i, d| {
                be.encoder_forward_positions(i[0], i[1], i[2], i[3], i[4], d.b, d.t, d.c)
            },
        },
        Case {
            op: "encoder_backward_positions",
            args: vec![
                ("dwte", F32, vp * c),
                ("dwpe", F32, t * c),
                ("dout", F32, btc),
                ("tokens", U32, bt),
                ("positions", U32, bt),
            ],
            call: |be, i, d| {
                be.encoder_backward_positions(i[0], i[1], i[2], i[3], i[4], d.b, d.t, d.c)
            },
        },
        Case {
            op: "encoder_backward",
            args: vec![
                ("dwte", F32, vp * c),
                ("dwpe", F32, t * c),
                ("dout", F32, btc),
                ("tokens", U32, bt),
            ],
            call: |be, i, d| be.encoder_backward(i[0], i[1], i[2], i[3], d.b, d.t, d.c),
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
                ("out", F32, bt * vp),
                ("a", F32, bt * c),
                ("b", F32, c * vp),
                ("bias", F32, vp),
            ],
            call: |be, i, d| mm(be, i, d, true, false),
        },
        Case {
            op: "bias_backward",
            args: vec![("dbias", F32, c), ("dout", F32, btc)],
            call: |be, i, d| be.bias_backward(i[0], i[1], d.b * d.t, d.c),
        },
        Case {
            op: "layernorm_forward",
            args: vec![
                ("out", F32, btc),
                ("mean", F32, bt),
                ("rstd", F32, bt),
                ("inp", F32, btc),
                ("weight", F32, c),
                ("bias", F32, c),
            ],
            call: |be, i, d| {
                be.layernorm_forward(i[0], i[1], i[2], i[3], i[4], i[5], d.b * d.t, d.c, 1e-5)
            },
        },
        Case {
            op: "layernorm_backward",
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
                be.layernorm_backward(
                    i[0],
                    i[1],
                    i[2],
                    i[3],
                    i[4],
                    i[5],
                    i[6],
                    i[7],
                    d.b * d.t,
                    d.c,
                )
            },
        },
        Case {
            op: "gelu_forward",
            args: vec![("out", F32, btc), ("inp", F32, btc)],
            call: |be, i, d| be.gelu_forward(i[0], i[1], d.b * d.t * d.c),
        },
        Case {
            op: "gelu_backward",
            args: vec![("dinp", F32, btc), ("inp", F32, btc), ("dout", F32, btc)],
            call: |be, i, d| be.gelu_backward(i[0], i[1], i[2], d.b * d.t * d.c),
        },
        Case {
            op: "attention_forward",
            args: vec![
                ("out", F32, btc),
                ("att", F32, b * nh * t * t),
                ("qkv", F32, 3 * btc),
            ],
            call: |be, i, d| be.attention_forward(i[0], i[1], i[2], d.b, d.t, d.c, d.nh),
        },
        Case {
            op: "attention_backward",
            args: vec![
                ("dqkv", F32, 3 * btc),
                ("dout", F32, btc),
                ("qkv", F32, 3 * btc),
                ("att", F32, b * nh * t * t),
            ],
            call: |be, i, d| be.attention_backward(i[0], i[1], i[2], i[3], d.b, d.t, d.c, d.nh),
        },
        Case {
            op: "attention_forward_segments",
            args: vec![
                ("out", F32, btc),
                ("att", F32, b * nh * t * t),
                ("qkv", F32, 3 * btc),
                ("segments", U32, bt),
            ],
            call: |be, i, d| {
                be.attention_forward_segments(i[0], i[1], i[2], i[3], d.b, d.t, d.c, d.nh)
            },
        },
        Case {
            op: "attention_kv_forward",
            args: vec![
                ("out", F32, btc),
                ("qkv", F32, 3 * btc),
                ("k_cache", F32, b * (t + 2) * c),
                ("v_cache", F32, b * (t + 2) * c),
            ],
            // t new positions after 2 cached ones, cache length t + 2.
            call: |be, i, d| {
                be.attention_kv_forward(i[0], i[1], i[2], i[3], d.b, d.t, 2, d.t + 2, d.c, d.nh)
            },
        },
        Case {
            op: "crossentropy_forward",
            args: vec![
                ("losses", F32, bt),
                ("probs", F32, bt * vp),
                ("logits", F32, bt * vp),
                ("targets", U32, bt),
            ],
            call: |be, i, d| be.crossentropy_forward(i[0], i[1], i[2], i[3], d.b * d.t, d.v, d.vp),
        },
        Case {
            op: "crossentropy_backward",
            args: vec![
                ("dlogits", F32, bt * vp),
                ("probs", F32, bt * vp),
                ("targets", U32, bt),
                ("dlosses", F32, bt),
            ],
            call: |be, i, d| be.crossentropy_backward(i[0], i[1], i[2], i[3], d.b * d.t, d.v, d.vp),
        },
        Case {
            op: "add",
            args: vec![("out", F32, btc), ("a", F32, btc), ("b", F32, btc)],
            call: |be, i, d| be.add(i[0], i[1], i[2], d.b * d.t * d.c),
        },
        Case {
            op: "accumulate",
            args: vec![("dst", F32, btc), ("src", F32, btc)],
            call: |be, i, d| be.accumulate(i[0], i[1], d.b * d.t * d.c),
        },
        Case {
            op: "scale",
            args: vec![("buf", F32, btc)],
            call: |be, i, d| be.scale(i[0], d.b * d.t * d.c, 0.5),
        },
        Case {
            op: "sum_squares",
            args: vec![("buf", F32, btc)],
            call: |be, i, d| be.sum_squares(i[0], d.b * d.t * d.c).map(drop),
        },
        Case {
            op: "adamw",
            args: vec![
                ("params", F32, btc),
                ("grads", F32, btc),
                ("m", F32, btc),
                ("v", F32, btc),
            ],
            call: |be, i, d| {
                be.adamw(AdamWArgs {
                    params: i[0],
                    grads: i[1],
                    m: i[2],
                    v: i[3],
                    n: d.b * d.t * d.c,
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    grad_scale: 1.0,
                    step: 3,
                })
            },
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
                        // wpe holds T rows in every case that takes positions.
                        "positions" => d.t as u32,
                        _ => d.vp as u32,
                    };
                    let mut data: Vec<u32> = (0..len).map(|_| rng.below(hi)).collect();
                    if let Some(first) = data.first_mut() {
                        // Use the last embedding (or position) row, so an undersized table is caught.
                        *first = hi - 1;
                    }
                    be.upload_u32(id, &data).unwrap();
                }
                DType::F32 => {
                    let mut data = rng.vec(len, 1.0);
                    if name == "rstd" || name == "v" || name == "probs" {
                        data.iter_mut().for_each(|x| *x = x.abs() + 0.1);
                    }
                    be.upload_f32(id, &data).unwrap();
                }
                _ => {}
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
                if dtype == DType::F32 {
                    let data = be.download_f32(*id).unwrap();
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
            be.cast(narrow, src, len).ok_or_err().unwrap();
            be.cast(back, narrow, len).ok_or_err().unwrap();
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
        be.cast(b, src, len).ok_or_err().unwrap();
        be.cast(h, b, len).ok_or_err().unwrap();
        let want: Vec<f16> = f.iter().map(|&x| f16::from_f32(bf16::from_f32(x).to_f32())).collect();
        prop_assert_eq!(be.download_f16(h).unwrap(), want);
        // Casting into a u32 buffer or from one is an error.
        let u = be.alloc_buf(DType::U32, len).unwrap();
        prop_assert!(be.cast(u, src, len).is_err());
        prop_assert!(be.cast(src, u, len).is_err());
    }
}

#[test]
fn outputs_aliasing_inputs_are_errors() {
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let x = be.from_f32(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let err = be.gelu_forward(x, x, 4).ok_or_err().unwrap_err().0;
    assert!(
        err.contains("gelu_forward") && err.contains("alias"),
        "{err}"
    );
    let y = be.from_f32(&[0.0; 4]).unwrap();
    // Inputs may repeat (a + a).
    be.add(y, x, x, 4).ok_or_err().unwrap();
    assert_eq!(be.download_f32(y).unwrap(), vec![2.0, 4.0, 6.0, 8.0]);
    // Both buffers survive the refused call.
    assert_eq!(be.download_f32(x).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn bad_shapes_are_errors() {
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let big = be.alloc_buf(DType::F32, 10_000).unwrap();
    let (a, b, c) = (
        be.alloc_buf(DType::F32, 10_000).unwrap(),
        big,
        be.alloc_buf(DType::F32, 10_000).unwrap(),
    );
    // C not divisible by NH.
    let err = be
        .attention_forward(a, c, b, 1, 2, 6, 4)
        .ok_or_err()
        .unwrap_err()
        .0;
    assert!(err.contains("NH"), "{err}");
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
    let wte = be.alloc_buf(DType::F32, 4 * 8).unwrap();
    let err = be
        .encoder_forward(a, toks, wte, b, 1, 2, 8)
        .ok_or_err()
        .unwrap_err()
        .0;
    assert!(err.contains("token 5000"), "{err}");
    // Overflowing dimensions.
    let err = be
        .gelu_backward(a, b, c, usize::MAX)
        .ok_or_err()
        .unwrap_err()
        .0;
    assert!(err.contains("gelu_backward"), "{err}");
    let (m, r, w) = (
        be.alloc_buf(DType::F32, 4).unwrap(),
        be.alloc_buf(DType::F32, 4).unwrap(),
        be.alloc_buf(DType::F32, 4).unwrap(),
    );
    let err = be
        .layernorm_forward(a, m, r, b, w, w, usize::MAX / 2, 4, 1e-5)
        .ok_or_err()
        .unwrap_err()
        .0;
    assert!(err.contains("overflow"), "{err}");
}
