//! AdamW against a scalar f64 implementation of torch.optim.AdamW.

mod common;

use common::reference as r;
use common::*;
use kiln_abi::{AdamWArgs, IntoBResult, Rounding};

#[test]
fn adamw_matches_pytorch_formula_over_several_steps() {
    let n = 20_000; // more than one parallel chunk
    let mut rng = Rng::new(21);
    let p0 = rng.vec(n, 1.0);
    let mut be = backend(2);
    let (pi, mi, vi) = (upload(&mut be, &p0), zeros(&mut be, n), zeros(&mut be, n));
    let (mut p, mut m, mut v) = (to_f64(&p0), vec![0.0; n], vec![0.0; n]);
    let (lr, b1, b2, eps, wd, scale) = (1e-2f32, 0.9f32, 0.95f32, 1e-8f32, 0.1f32, 0.5f32);
    for step in 1..=5u64 {
        let g = rng.vec(n, 2.0);
        let gi = upload(&mut be, &g);
        let args = AdamWArgs {
            params: pi,
            grads: gi,
            m: mi,
            v: vi,
            n,
            lr,
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
            grad_scale: scale,
            step,
            params_16: None.into(),
            rounding: Rounding::NearestEven,
            seed: 0,
            control: None.into(),
        };
        be.adamw(args).ok_or_err().unwrap();
        let g64: Vec<f64> = g.iter().map(|&x| x as f64 * scale as f64).collect();
        r::adamw(
            &mut p, &g64, &mut m, &mut v, lr as f64, b1 as f64, b2 as f64, eps as f64, wd as f64,
            step,
        );
        be.free(gi).ok_or_err().unwrap();
    }
    assert_close("params", &download(&mut be, pi), &p, 1e-5, 1e-6);
    assert_close("m", &download(&mut be, mi), &m, 1e-5, 1e-7);
    assert_close("v", &download(&mut be, vi), &v, 1e-5, 1e-9);
}

#[test]
fn adamw_rejects_step_zero_and_aliasing() {
    let mut be = backend(1);
    let p = upload(&mut be, &[1.0; 4]);
    let (m, v) = (zeros(&mut be, 4), zeros(&mut be, 4));
    let mut args = AdamWArgs {
        params: p,
        grads: p,
        m,
        v,
        n: 4,
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        grad_scale: 1.0,
        step: 1,
        params_16: None.into(),
        rounding: Rounding::NearestEven,
        seed: 0,
        control: None.into(),
    };
    let err = be.adamw(args).ok_or_err().unwrap_err().0;
    assert!(err.contains("overlaps"), "{err}");
    args.grads = zeros(&mut be, 4);
    args.step = 0;
    let err = be.adamw(args).ok_or_err().unwrap_err().0;
    assert!(err.contains("step"), "{err}");
}
