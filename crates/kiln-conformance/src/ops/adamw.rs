//! AdamW (PyTorch semantics): the f32 master and moments, 16-bit gradients,
//! the fused 16-bit copy (nearest-even or stochastic, bit for bit against
//! `kiln_abi::rounding`), and the device-side control block (gradient
//! factor and skip) of `kiln_abi::stats`.

use half::{bf16, f16};
use kiln_abi::rounding::{bf16_stochastic, f16_stochastic, random_bits};
use kiln_abi::stats::{STAT_GRAD_FACTOR, STAT_SKIP, STAT_SLOTS};
use kiln_abi::{AdamWArgs, DType, Rounding};

use crate::case::{values_of, OpCase};
use crate::env::Env;

type Cases = Result<Vec<OpCase>, String>;

const N: usize = 13;
const LR: f32 = 1e-2;
const B1: f32 = 0.9;
const B2: f32 = 0.999;
const EPS: f32 = 1e-8;
const WD: f32 = 0.1;
const GRAD_SCALE: f32 = 0.5;
const STEP: u64 = 3;
const SEED: u64 = 0xADA5;

/// (params, m, v) after one step with gradient multiplier `factor`.
fn step(p: &[f64], g: &[f64], m: &[f64], v: &[f64], factor: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (b1, b2) = (B1 as f64, B2 as f64);
    let (bc1, bc2) = (1.0 - b1.powi(STEP as i32), 1.0 - b2.powi(STEP as i32));
    let (mut po, mut mo, mut vo) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..p.len() {
        let gi = g[i] * GRAD_SCALE as f64 * factor;
        let mi = b1 * m[i] + (1.0 - b1) * gi;
        let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
        let update = (mi / bc1) / ((vi / bc2).sqrt() + EPS as f64) + WD as f64 * p[i];
        po.push(p[i] - LR as f64 * update);
        mo.push(mi);
        vo.push(vi);
    }
    (po, mo, vo)
}

#[derive(Clone, Copy, PartialEq)]
enum Control {
    None,
    Factor(f32),
    Skip,
}

pub fn adamw(env: &mut Env, dt: DType) -> Cases {
    let mut settings = vec![
        ("plain", Control::None, None),
        (
            "gradient factor from a stats block",
            Control::Factor(0.7),
            None,
        ),
        (
            "skipped by the stats block: nothing written",
            Control::Skip,
            None,
        ),
    ];
    if dt != DType::F32 {
        settings.push((
            "16-bit copy, nearest even",
            Control::None,
            Some(Rounding::NearestEven),
        ));
        settings.push((
            "16-bit copy, stochastic",
            Control::Factor(1.3),
            Some(Rounding::Stochastic),
        ));
        settings.push((
            "16-bit copy, skipped",
            Control::Skip,
            Some(Rounding::Stochastic),
        ));
    }
    let mut cases = Vec::new();
    for (label, control, copy) in settings {
        let mut c = OpCase::new("adamw", label, dt);
        let params = c.f32("params", env.rng.vec(N));
        let grads = c.data("grads", env.rng.vec(N));
        let m = c.f32("m", env.rng.vec_in(N, -0.1, 0.1));
        let v = c.f32("v", env.rng.vec_in(N, 0.0, 0.02));
        let p16 = copy.map(|_| c.data("params_16", env.rng.vec(N)));
        let ctl = (control != Control::None).then(|| {
            let mut block = vec![0.0; STAT_SLOTS];
            block[STAT_GRAD_FACTOR] = match control {
                Control::Factor(f) => f as f64,
                _ => 0.25,
            };
            block[STAT_SKIP] = if control == Control::Skip { 1.0 } else { 0.0 };
            c.f32("control", block)
        });
        let factor = match control {
            Control::Factor(f) => f as f64,
            _ => 1.0,
        };
        let (p, mm, vv) = step(
            &c.vals(params),
            &c.vals(grads),
            &c.vals(m),
            &c.vals(v),
            factor,
        );
        if control == Control::Skip {
            for i in [Some(params), Some(m), Some(v), p16].into_iter().flatten() {
                c.expect_unchanged(i);
            }
        } else {
            c.expect(params, p);
            c.expect(m, mm);
            c.expect(v, vv);
            if let (Some(p16), Some(rounding)) = (p16, copy) {
                // The copy is the backend's own updated master, rounded.
                c.verify(move |out| {
                    let master = values_of(DType::F32, &out[params]);
                    let want: Vec<f64> = master
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| narrow(dt, x as f32, rounding, i))
                        .collect();
                    super::same_bits_or_nan(dt, &out[p16], &want).map_err(|e| {
                        format!("`params_16` is not the updated master rounded {rounding:?}: {e}")
                    })
                });
            }
        }
        if let Some(ctl) = ctl {
            c.expect_unchanged(ctl);
        }
        c.call(move |be, ids| {
            be.adamw(AdamWArgs {
                params: ids[params],
                grads: ids[grads],
                m: ids[m],
                v: ids[v],
                params_16: p16.map(|i| ids[i]).into(),
                rounding: copy.unwrap_or(Rounding::NearestEven),
                seed: SEED,
                n: N,
                lr: LR,
                beta1: B1,
                beta2: B2,
                eps: EPS,
                weight_decay: WD,
                grad_scale: GRAD_SCALE,
                control: ctl.map(|i| ids[i]).into(),
                step: STEP,
            })
        });
        cases.push(c);
    }
    Ok(cases)
}

fn narrow(dt: DType, x: f32, rounding: Rounding, i: usize) -> f64 {
    match (dt, rounding) {
        (DType::BF16, Rounding::NearestEven) => bf16::from_f32(x).to_f64(),
        (DType::F16, Rounding::NearestEven) => f16::from_f32(x).to_f64(),
        (DType::BF16, Rounding::Stochastic) => {
            bf16_stochastic(x, random_bits(SEED, i as u64)).to_f64()
        }
        (DType::F16, Rounding::Stochastic) => {
            f16_stochastic(x, random_bits(SEED, i as u64)).to_f64()
        }
        _ => x as f64,
    }
}
