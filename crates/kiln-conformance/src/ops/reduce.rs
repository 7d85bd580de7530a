//! `reduce` into a step-stats slot and `step_control`, against
//! `kiln_abi::stats::step_control_reference` bit for bit.

use kiln_abi::stats::{
    step_control_reference, STAT_GRAD_FACTOR, STAT_GRAD_NORM, STAT_GRAD_SUMSQ, STAT_LOSS,
    STAT_SKIP, STAT_SLOTS,
};
use kiln_abi::{DType, Reduce};

use crate::case::{values_of, OpCase};

use crate::env::Env;

type Cases = Result<Vec<OpCase>, String>;

pub fn reduce(env: &mut Env, dt: DType) -> Cases {
    let n = 37;
    let slot = 2;
    let mut cases = Vec::new();
    for kind in [Reduce::Sum, Reduce::SumSquares, Reduce::MaxAbs] {
        for prior in [0.25, 9.0] {
            let mut c = OpCase::new(
                "reduce",
                format!("{kind:?} into slot {slot} holding {prior}"),
                dt,
            );
            let dst = c.f32("dst", vec![-3.0, 5.0, prior]);
            let src = c.data("src", env.rng.vec_in(n + 4, -2.0, 2.0));
            c.loose(src);
            let x = &c.vals(src)[..n];
            let r = match kind {
                Reduce::Sum => prior + x.iter().sum::<f64>(),
                Reduce::SumSquares => prior + x.iter().map(|v| v * v).sum::<f64>(),
                Reduce::MaxAbs => x.iter().fold(prior, |m, v| m.max(v.abs())),
            };
            c.expect(dst, vec![-3.0, 5.0, r]);
            c.call(move |be, ids| be.reduce(kind, ids[dst], slot, ids[src], n));
            cases.push(c);
        }
    }
    // MaxAbs: a NaN anywhere wins (a non-finite gradient must be seen).
    let mut c = OpCase::new("reduce", "MaxAbs with a NaN: NaN wins", dt);
    let dst = c.f32("dst", vec![1.0]);
    let mut x = env.rng.vec(n);
    x[n / 2] = f64::NAN;
    let src = c.data("src", x);
    c.verify(move |out| {
        let v = values_of(DType::F32, &out[dst]);
        if v[0].is_nan() {
            Ok(())
        } else {
            Err(format!("`dst`: got {}, want NaN", v[0]))
        }
    });
    c.call(move |be, ids| be.reduce(Reduce::MaxAbs, ids[dst], 0, ids[src], n));
    cases.push(c);
    // dst is f32 only; a slot past its end is an error.
    let mut c = OpCase::new("reduce", "slot past the end of dst", dt);
    let dst = c.f32("dst", vec![0.0; 2]);
    let src = c.data("src", env.rng.vec(n));
    c.must_fail("slot 2 of a 2-element dst");
    c.call(move |be, ids| be.reduce(Reduce::Sum, ids[dst], 2, ids[src], n));
    cases.push(c);
    Ok(cases)
}

/// The whole block after `step_control`, as the reference writes it.
fn block_after(before: &[f64], max_norm: f32, inv: f32) -> Vec<f64> {
    let (factor, skip, norm) = step_control_reference(
        before[STAT_LOSS] as f32,
        before[STAT_GRAD_SUMSQ] as f32,
        max_norm,
        inv,
    );
    let mut after = before.to_vec();
    after[STAT_GRAD_FACTOR] = factor as f64;
    after[STAT_SKIP] = skip as f64;
    after[STAT_GRAD_NORM] = norm as f64;
    after
}

pub fn step_control(env: &mut Env, _dt: DType) -> Cases {
    let settings: [(&str, f32, f32, f32, f32); 8] = [
        ("no clipping (max_norm 0)", 12.5, 40.0, 0.0, 1.0),
        ("clipped", 12.5, 40.0, 1.0, 1.0),
        ("below max_norm", 12.5, 0.25, 1.0, 1.0),
        ("loss scale 1/1024, clipped", 3.0, 4.0e8, 1.0, 1.0 / 1024.0),
        (
            "loss scale 1/65536, not clipped",
            3.0,
            1.0e6,
            5.0,
            1.0 / 65536.0,
        ),
        ("NaN loss: skip", f32::NAN, 4.0, 1.0, 1.0),
        (
            "infinite sum of squares: skip",
            2.0,
            f32::INFINITY,
            1.0,
            1.0,
        ),
        ("NaN sum of squares: skip", 2.0, f32::NAN, 1.0, 0.5),
    ];
    let mut cases = Vec::new();
    for (label, loss, sumsq, max_norm, inv) in settings {
        let mut c = OpCase::new("step_control", label, DType::F32);
        let mut block = env.rng.vec(STAT_SLOTS);
        block[STAT_LOSS] = loss as f64;
        block[STAT_GRAD_SUMSQ] = sumsq as f64;
        let stats = c.f32("stats", block);
        let want = block_after(&c.vals(stats), max_norm, inv);
        // bit for bit (a NaN norm may be any NaN)
        c.verify(move |out| {
            super::same_bits_or_nan(DType::F32, &out[stats], &want)
                .map_err(|e| format!("`stats`: {e}"))
        });
        c.call(move |be, ids| be.step_control(ids[stats], max_norm, inv));
        cases.push(c);
    }
    Ok(cases)
}
