//! Hand-computed fixtures, finite-difference checks of every gradient and
//! proptest properties of the PPO / GRPO objectives.

use super::*;
use proptest::prelude::*;

fn close(a: f32, b: f64, tol: f64) -> bool {
    ((a as f64) - b).abs() <= tol
}

fn assert_all_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(close(g, w, tol), "index {i}: got {g}, want {w} ({got:?})");
    }
}

// ---------------------------------------------------------------- fixtures

#[test]
fn gae_three_tokens_gamma_one_lambda_095() {
    // r = [0.1, -0.2, 1.0], V = [0.5, 0.4, 0.3], V after the end = 0.
    // t=2: delta = 1.0 + 0   - 0.3 =  0.7 ;  A2 = 0.7
    // t=1: delta = -0.2 + 0.3 - 0.4 = -0.3 ;  A1 = -0.3 + 0.95*0.7   = 0.365
    // t=0: delta = 0.1 + 0.4 - 0.5 =  0.0 ;  A0 =  0.0 + 0.95*0.365 = 0.34675
    // returns = A + V = [0.84675, 0.765, 1.0]
    let lens = [3];
    let layout = ResponseLayout::new(3, &lens);
    let (adv, ret) = gae(&[0.1, -0.2, 1.0], &[0.5, 0.4, 0.3], layout, 1.0, 0.95);
    assert_all_close(&adv, &[0.34675, 0.365, 0.7], 1e-6);
    assert_all_close(&ret, &[0.84675, 0.765, 1.0], 1e-6);
}

#[test]
fn gae_discounts_and_ignores_padding() {
    // Row 0 has 2 real tokens and one padding slot holding junk (9.0).
    // gamma 0.9, lambda 0.95:
    // t=1: delta = 2.0 + 0 - 0.5 = 1.5 ; A1 = 1.5
    // t=0: delta = 0.5 + 0.9*0.5 - 1.0 = -0.05 ; A0 = -0.05 + 0.9*0.95*1.5 = 1.2325
    // Row 1 is empty: all zeros.
    let lens = [2, 0];
    let layout = ResponseLayout::new(3, &lens);
    let rewards = [0.5, 2.0, 9.0, 9.0, 9.0, 9.0];
    let values = [1.0, 0.5, 9.0, 9.0, 9.0, 9.0];
    let (adv, ret) = gae(&rewards, &values, layout, 0.9, 0.95);
    assert_all_close(&adv, &[1.2325, 1.5, 0.0, 0.0, 0.0, 0.0], 1e-6);
    assert_all_close(&ret, &[2.2325, 2.0, 0.0, 0.0, 0.0, 0.0], 1e-6);
}

#[test]
fn token_rewards_k1_and_k3_score_on_last_token() {
    // logp = [-1, -2, -0.5], ref = [-1.5, -1, -0.5], beta = 0.1, score 2.
    // k1 = logp - ref = [0.5, -1.0, 0.0] -> r = [-0.05, 0.1, 0 + 2.0]
    // d = ref - logp = [-0.5, 1.0, 0.0]; k3 = e^d - 1 - d
    //   = [0.60653066 - 1 + 0.5, 2.71828183 - 1 - 1, 0] = [0.10653066, 0.71828183, 0]
    // Row 1 (one real token then padding): logp -0.2, ref -0.2, score -1.
    let lens = [3, 1];
    let layout = ResponseLayout::new(3, &lens);
    let logp = [-1.0, -2.0, -0.5, -0.2, 5.0, 5.0];
    let refp = [-1.5, -1.0, -0.5, -0.2, -7.0, -7.0];
    let k1 = token_rewards(&[2.0, -1.0], &logp, &refp, layout, 0.1, KlEstimator::K1);
    assert_all_close(&k1.kl, &[0.5, -1.0, 0.0, 0.0, 0.0, 0.0], 1e-6);
    assert_all_close(&k1.rewards, &[-0.05, 0.1, 2.0, -1.0, 0.0, 0.0], 1e-6);
    let k3 = token_rewards(&[2.0, -1.0], &logp, &refp, layout, 0.1, KlEstimator::K3);
    assert_all_close(&k3.kl, &[0.10653066, 0.71828183, 0.0, 0.0, 0.0, 0.0], 1e-6);
    assert_all_close(
        &k3.rewards,
        &[-0.010653066, -0.071828183, 2.0, -1.0, 0.0, 0.0],
        1e-6,
    );
}

#[test]
fn missing_eos_penalty_only_hits_unfinished_responses() {
    let s = penalise_missing_eos(&[1.0, 0.5, -0.25], &[true, false, false], 1.0);
    assert_eq!(s, vec![1.0, -0.5, -1.25]);
}

#[test]
fn adaptive_kl_controller_matches_ziegler_update() {
    // init 0.2, target 6, horizon 10000.
    // KL 12: e = clip(12/6 - 1) = clip(1.0) = 0.2; beta = 0.2 * (1 + 0.2*256/10000) = 0.201024
    // KL 3:  e = clip(-0.5) = -0.2;  beta = 0.201024 * (1 - 0.2*256/10000) = 0.201024 * 0.99488
    // KL 6.6: e = 0.1; beta *= 1 + 0.1*100/10000 = 1.001
    let mut c = KlController::new(KlControl::Adaptive {
        init_coef: 0.2,
        target: 6.0,
        horizon: 10000.0,
    });
    assert_eq!(c.coef(), 0.2);
    c.update(12.0, 256);
    assert!((c.coef() - 0.201024).abs() < 1e-12);
    c.update(3.0, 256);
    assert!((c.coef() - 0.201024 * 0.99488).abs() < 1e-12);
    let before = c.coef();
    c.update(6.6, 100);
    assert!((c.coef() - before * 1.001).abs() < 1e-12);

    let mut fixed = KlController::new(KlControl::Fixed { coef: 0.05 });
    fixed.update(100.0, 1000);
    assert_eq!(fixed.coef(), 0.05);
}

#[test]
fn clipped_policy_loss_fixture() {
    // eps 0.2; five tokens (new - old, A):
    //  (0.1, 1):  rho = e^0.1 = 1.10517092, inside the band: term -1.10517092, grad -rho*A/5
    //  (0.3, 2):  rho = e^0.3 = 1.34985881; -A rho = -2.69971762 < -A*1.2 = -2.4 -> clipped, -2.4
    //  (0.3, -1): -A rho = 1.34985881 > -A*1.2 = 1.2 -> unclipped, grad -A rho/5 = 1.34985881/5
    //  (-0.5, 1): rho = e^-0.5 = 0.60653066; -0.60653066 > -0.8 -> unclipped, grad -0.60653066/5
    //  (-0.5, -1): 0.60653066 < 0.8 -> clipped, 0.8
    // loss = (-1.10517092 - 2.4 + 1.34985881 - 0.60653066 + 0.8) / 5 = -1.96184277/5 = -0.39236855
    // clip_frac = 2/5; approx_kl = 0.5*(0.01 + 0.09 + 0.09 + 0.25 + 0.25)/5 = 0.069
    let lens = [3, 2];
    let layout = ResponseLayout::new(3, &lens);
    let old = [-1.0, -1.0, -1.0, -2.0, -2.0, 0.0];
    let new = [-0.9, -0.7, -0.7, -2.5, -2.5, 3.0];
    let adv = [1.0, 2.0, -1.0, 1.0, -1.0, 100.0];
    let pl = clipped_policy_loss(&new, &old, &adv, layout, 0.2);
    assert!(close(pl.loss, -0.39236855, 1e-6), "{}", pl.loss);
    assert!(close(pl.clip_frac, 0.4, 1e-7));
    assert!(close(pl.approx_kl, 0.069, 1e-6));
    let mean_ratio = (1.10517092 + 2.0 * 1.34985881 + 2.0 * 0.60653066) / 5.0;
    assert!(close(pl.ratio_mean, mean_ratio, 1e-6));
    assert_all_close(
        &pl.grad,
        &[
            -1.10517092 / 5.0,
            0.0,
            1.34985881 / 5.0,
            -0.60653066 / 5.0,
            0.0,
            0.0,
        ],
        1e-6,
    );
}

#[test]
fn clipped_value_loss_fixture() {
    // clip 0.2; (V, V_old, R):
    //  (1.0, 0.9, 2.0): V_clip = 1.0 (inside [0.7, 1.1]); both errors 1.0; grad (1-2)/3
    //  (1.5, 1.0, 2.0): V_clip = 1.2; (V-R)^2 = 0.25 < (1.2-2)^2 = 0.64 -> clipped, 0.64, grad 0
    //  (1.5, 1.0, 1.0): V_clip = 1.2; 0.25 > 0.04 -> unclipped 0.25, grad (1.5-1)/3
    // loss = 0.5 * (1.0 + 0.64 + 0.25) / 3 = 0.315 ; clip_frac = 1/3
    let lens = [3];
    let layout = ResponseLayout::new(3, &lens);
    let vl = clipped_value_loss(
        &[1.0, 1.5, 1.5],
        &[0.9, 1.0, 1.0],
        &[2.0, 2.0, 1.0],
        layout,
        0.2,
    );
    assert!(close(vl.loss, 0.315, 1e-6), "{}", vl.loss);
    assert!(close(vl.clip_frac, 1.0 / 3.0, 1e-6));
    assert_all_close(&vl.grad, &[-1.0 / 3.0, 0.0, 0.5 / 3.0], 1e-6);
}

#[test]
fn whitening_fixture() {
    // x = [1, 2, 3] (+ a padding slot 50): mean 2, unbiased var (1 + 0 + 1)/2 = 1.
    let lens = [3];
    let layout = ResponseLayout::new(4, &lens);
    let w = masked_whiten(&[1.0, 2.0, 3.0, 50.0], layout, true);
    assert_all_close(&w, &[-1.0, 0.0, 1.0, 0.0], 1e-6);
    let w = masked_whiten(&[1.0, 2.0, 3.0, 50.0], layout, false);
    assert_all_close(&w, &[1.0, 2.0, 3.0, 0.0], 1e-6);
}

#[test]
fn logprob_and_entropy_fixture() {
    // logits [0, ln 2, 0] -> p = [0.25, 0.5, 0.25]; logp(1) = ln 0.5;
    // H = -(2 * 0.25 ln 0.25 + 0.5 ln 0.5) = 0.69314718 + 0.34657359 = 1.03972077
    let ln2 = std::f32::consts::LN_2;
    let (lp, h) = logprob_and_entropy(&[0.0, ln2, 0.0], 1, 1.0);
    assert!(close(lp, (0.5f64).ln(), 1e-6));
    assert!(close(h, 1.03972077, 1e-6));
    // Temperature 2: p ∝ [1, sqrt 2, 1], sum 3.41421356; p1 = 0.41421356
    let (lp, _) = logprob_and_entropy(&[0.0, ln2, 0.0], 1, 2.0);
    assert!(close(lp, (0.41421356f64).ln(), 1e-6));
}

#[test]
fn group_advantages_fixture() {
    // Group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(4*0.25/3) = 0.57735027,
    // A = ±0.5 / (0.57735027 + 1e-4) = ±0.86587349. Group [2, 2, 2, 2]: A = 0.
    let a = group_advantages(
        &[1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0],
        4,
        GroupScale::Group,
    );
    let p = 0.5 / (0.57735027 + 1e-4);
    assert_all_close(&a, &[p, -p, -p, p, 0.0, 0.0, 0.0, 0.0], 1e-6);
    let a = group_advantages(&[1.0, 0.0, 3.0, 5.0], 2, GroupScale::None);
    assert_all_close(&a, &[0.5, -0.5, -1.0, 1.0], 1e-7);
}

#[test]
fn grpo_loss_fixture() {
    // beta 0.1, eps 0.2, new = old (rho = 1).
    // Row 0 (A = 1): logp [-1, -2], ref [-1, -1]; d = ref - logp = [0, 1]
    //   k3 = [0, e - 2] = [0, 0.71828183]; per token -1 + 0.1*k3 = [-1, -0.92817182]
    // Row 1 (A = -0.5): logp -0.5, ref -1; d = -0.5; k3 = e^-0.5 - 1 + 0.5 = 0.10653066
    //   per token 0.5 + 0.010653066 = 0.51065307
    // Sequence mean: ((-1 - 0.92817182)/2 + 0.51065307)/2 = (-0.96408591 + 0.51065307)/2 = -0.22671642
    // Token mean: (-1 - 0.92817182 + 0.51065307)/3 = -0.47250625
    // KL mean per token: (0 + 0.71828183 + 0.10653066)/3 = 0.27493750
    let lens = [2, 1];
    let layout = ResponseLayout::new(2, &lens);
    let logp = [-1.0, -2.0, -0.5, 0.0];
    let refp = [-1.0, -1.0, -1.0, 0.0];
    let adv = [1.0, -0.5];
    let g = grpo_loss(
        &logp,
        &logp,
        &refp,
        &adv,
        layout,
        0.2,
        0.1,
        GrpoAggregation::SequenceMean,
    );
    assert!(close(g.loss, -0.22671642, 1e-6), "{}", g.loss);
    assert!(close(g.kl, 0.2749375, 1e-6));
    assert_eq!(g.clip_frac, 0.0);
    // grad per token = w * (-A + beta * (1 - e^d)); w = 1/(len*rows)
    //  row0: w = 1/4: [(-1 + 0)/4, (-1 + 0.1*(1 - e))/4] = [-0.25, -1.17182818/4] = [-0.25, -0.29295705]
    //  row1: w = 1/2: (0.5 + 0.1*(1 - e^-0.5))/2 = (0.5 + 0.03934693)/2 = 0.26967347
    assert_all_close(&g.grad, &[-0.25, -0.29295705, 0.26967347, 0.0], 1e-6);
    let g = grpo_loss(
        &logp,
        &logp,
        &refp,
        &adv,
        layout,
        0.2,
        0.1,
        GrpoAggregation::TokenMean,
    );
    assert!(close(g.loss, -0.47250625, 1e-6), "{}", g.loss);
}

// ------------------------------------------------------- finite differences

/// Central differences of `f` at every real token of `x`; `skip(k)` marks
/// points at a kink of a piecewise loss (clip boundaries), where the
/// derivative is one-sided. Padding must have zero gradient and no effect.
fn check_grad(
    x: &[f32],
    grad: &[f32],
    layout: ResponseLayout,
    f: impl Fn(&[f32]) -> f32,
    skip: impl Fn(usize, &[f32]) -> bool,
) {
    let h = 1e-3f32;
    let valid: Vec<usize> = layout.valid_indices().collect();
    for k in 0..x.len() {
        let mut xp = x.to_vec();
        let mut xm = x.to_vec();
        xp[k] += h;
        xm[k] -= h;
        if skip(k, &xp) || skip(k, &xm) {
            continue;
        }
        let fd = (f(&xp) as f64 - f(&xm) as f64) / (2.0 * h as f64);
        if valid.contains(&k) {
            assert!(
                (fd - grad[k] as f64).abs() <= 2e-3 * (1.0 + fd.abs()),
                "index {k}: finite difference {fd} vs analytic {}",
                grad[k]
            );
        } else {
            assert_eq!(grad[k], 0.0, "padding index {k} has a gradient");
            assert_eq!(fd, 0.0, "padding index {k} changes the loss");
        }
    }
}

fn batch(rows: usize, cols: usize, seed: u64) -> (Vec<usize>, Vec<Vec<f32>>) {
    // Deterministic pseudo-random inputs (no RNG crate needed).
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 / (1u64 << 53) as f64) as f32
    };
    let lens = (0..rows).map(|i| (i * 2 + 1).min(cols)).collect();
    let arrays = (0..6)
        .map(|_| (0..rows * cols).map(|_| next() * 2.0 - 1.0).collect())
        .collect();
    (lens, arrays)
}

fn near_clip(ratio_log: f32, eps: f32) -> bool {
    let r = (ratio_log as f64).exp();
    (r - (1.0 + eps as f64)).abs() < 5e-3 || (r - (1.0 - eps as f64)).abs() < 5e-3
}

#[test]
fn policy_loss_gradient_matches_finite_differences() {
    for seed in 0..5 {
        let (lens, a) = batch(3, 5, seed);
        let layout = ResponseLayout::new(5, &lens);
        let old = &a[0];
        // new - old in [-0.5, 0.5]: many tokens on each side of the band.
        let new: Vec<f32> = old.iter().zip(&a[1]).map(|(o, d)| o + 0.5 * d).collect();
        let adv: Vec<f32> = a[2].iter().map(|x| x * 2.0).collect();
        let pl = clipped_policy_loss(&new, old, &adv, layout, 0.2);
        assert!(
            pl.clip_frac > 0.0 && pl.clip_frac < 1.0,
            "seed {seed}: want both branches"
        );
        check_grad(
            &new,
            &pl.grad,
            layout,
            |x| clipped_policy_loss(x, old, &adv, layout, 0.2).loss,
            |k, x| near_clip(x[k] - old[k], 0.2),
        );
    }
}

#[test]
fn value_loss_gradient_matches_finite_differences() {
    for seed in 0..5 {
        let (lens, a) = batch(3, 5, seed + 10);
        let layout = ResponseLayout::new(5, &lens);
        let old = &a[0];
        let new: Vec<f32> = old.iter().zip(&a[1]).map(|(o, d)| o + 0.5 * d).collect();
        let ret: Vec<f32> = a[2].iter().map(|x| x * 2.0).collect();
        let vl = clipped_value_loss(&new, old, &ret, layout, 0.2);
        check_grad(
            &new,
            &vl.grad,
            layout,
            |x| clipped_value_loss(x, old, &ret, layout, 0.2).loss,
            // Kinks: the band edges, and where both squared errors are equal.
            |k, x| {
                let (v, o, r) = (x[k], old[k], ret[k]);
                let vc = v.clamp(o - 0.2, o + 0.2);
                (v - (o + 0.2)).abs() < 5e-3
                    || (v - (o - 0.2)).abs() < 5e-3
                    || ((v - r).powi(2) - (vc - r).powi(2)).abs() < 5e-3
            },
        );
    }
}

#[test]
fn grpo_gradient_matches_finite_differences() {
    for agg in [GrpoAggregation::SequenceMean, GrpoAggregation::TokenMean] {
        for seed in 0..4 {
            let (lens, a) = batch(4, 4, seed + 20);
            let layout = ResponseLayout::new(4, &lens);
            let old = &a[0];
            let new: Vec<f32> = old.iter().zip(&a[1]).map(|(o, d)| o + 0.5 * d).collect();
            let refp: Vec<f32> = old.iter().zip(&a[2]).map(|(o, d)| o + d).collect();
            let adv: Vec<f32> = a[3][..4].to_vec();
            let g = grpo_loss(&new, old, &refp, &adv, layout, 0.2, 0.3, agg);
            check_grad(
                &new,
                &g.grad,
                layout,
                |x| grpo_loss(x, old, &refp, &adv, layout, 0.2, 0.3, agg).loss,
                |k, x| near_clip(x[k] - old[k], 0.2),
            );
        }
    }
}

#[test]
fn kl_estimator_gradients_match_finite_differences() {
    for est in [KlEstimator::K1, KlEstimator::K3] {
        for &(lp, rp) in &[(-1.0f32, -1.5f32), (-3.0, -0.2), (-0.1, -0.1), (-2.0, -4.0)] {
            let h = 1e-3f32;
            let fd = (est.per_token(lp + h, rp) as f64 - est.per_token(lp - h, rp) as f64)
                / (2.0 * h as f64);
            let g = est.grad(lp, rp) as f64;
            assert!(
                (fd - g).abs() < 1e-3 * (1.0 + g.abs()),
                "{est:?} {lp} {rp}: {fd} vs {g}"
            );
        }
    }
}

// ---------------------------------------------------------------- properties

fn layout_and_values() -> impl Strategy<Value = (usize, Vec<usize>, Vec<f32>, Vec<f32>)> {
    (1usize..6, 1usize..5).prop_flat_map(|(cols, rows)| {
        (
            Just(cols),
            prop::collection::vec(0..=cols, rows),
            prop::collection::vec(-3.0f32..3.0, rows * cols),
            prop::collection::vec(-3.0f32..3.0, rows * cols),
        )
    })
}

proptest! {
    #[test]
    fn whitening_gives_mean_zero_std_one((cols, lens, x, _v) in layout_and_values()) {
        let layout = ResponseLayout::new(cols, &lens);
        let n = layout.count();
        let spread = {
            let xs: Vec<f32> = layout.valid_indices().map(|k| x[k]).collect();
            xs.iter().cloned().fold(f32::MIN, f32::max) - xs.iter().cloned().fold(f32::MAX, f32::min)
        };
        prop_assume!(n >= 2 && spread > 1e-2);
        let w = masked_whiten(&x, layout, true);
        let mean = layout.valid_indices().map(|k| w[k] as f64).sum::<f64>() / n as f64;
        let var = layout.valid_indices().map(|k| (w[k] as f64 - mean).powi(2)).sum::<f64>()
            / (n - 1) as f64;
        prop_assert!(mean.abs() < 1e-5, "mean {}", mean);
        prop_assert!((var.sqrt() - 1.0).abs() < 1e-4, "std {}", var.sqrt());
        for (k, &wk) in w.iter().enumerate() {
            if !layout.valid_indices().any(|j| j == k) {
                prop_assert_eq!(wk, 0.0);
            }
        }
    }

    #[test]
    fn gae_with_lambda_one_gamma_one_is_returns_to_go_minus_values(
        (cols, lens, r, v) in layout_and_values()
    ) {
        let layout = ResponseLayout::new(cols, &lens);
        let (adv, ret) = gae(&r, &v, layout, 1.0, 1.0);
        for (i, &l) in lens.iter().enumerate() {
            for t in 0..l {
                let k = i * cols + t;
                let to_go: f64 = (t..l).map(|s| r[i * cols + s] as f64).sum();
                prop_assert!((ret[k] as f64 - to_go).abs() < 1e-4);
                prop_assert!((adv[k] as f64 - (to_go - v[k] as f64)).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn ratio_one_means_no_clipping((cols, lens, logp, adv) in layout_and_values()) {
        let layout = ResponseLayout::new(cols, &lens);
        let pl = clipped_policy_loss(&logp, &logp, &adv, layout, 0.2);
        prop_assert_eq!(pl.clip_frac, 0.0);
        prop_assert_eq!(pl.approx_kl, 0.0);
        let n = layout.count();
        if n > 0 {
            // At rho = 1 the surrogate is -mean(A) and its gradient -A/n.
            prop_assert!((pl.loss - -masked_mean(&adv, layout)).abs() < 1e-5);
            for k in layout.valid_indices() {
                prop_assert!((pl.grad[k] + adv[k] / n as f32).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn k3_is_nonnegative_and_zero_at_equality(lp in -10.0f32..0.0, rp in -10.0f32..0.0) {
        prop_assert!(KlEstimator::K3.per_token(lp, rp) >= 0.0);
        prop_assert_eq!(KlEstimator::K3.per_token(lp, lp), 0.0);
        prop_assert_eq!(KlEstimator::K1.per_token(lp, lp), 0.0);
    }

    #[test]
    fn group_advantages_are_centred_per_group(
        scores in prop::collection::vec(-5.0f32..5.0, 1..6).prop_flat_map(|g| {
            let n = g.len();
            (Just(n), prop::collection::vec(-5.0f32..5.0, n * 3))
        })
    ) {
        let (g, s) = scores;
        for scale in [GroupScale::Group, GroupScale::Batch, GroupScale::None] {
            let a = group_advantages(&s, g, scale);
            for chunk in a.chunks(g) {
                let m: f64 = chunk.iter().map(|&x| x as f64).sum::<f64>() / g as f64;
                prop_assert!(m.abs() < 1e-3, "{:?}: group mean {}", scale, m);
            }
        }
    }

    #[test]
    fn token_rewards_sum_to_score_minus_beta_kl((cols, lens, lp, rp) in layout_and_values()) {
        let layout = ResponseLayout::new(cols, &lens);
        let scores: Vec<f32> = (0..lens.len()).map(|i| i as f32 - 1.0).collect();
        let tr = token_rewards(&scores, &lp, &rp, layout, 0.1, KlEstimator::K3);
        let sums = row_sums(&tr.rewards, layout);
        let kls = row_sums(&tr.kl, layout);
        for (i, &l) in lens.iter().enumerate() {
            let want = if l > 0 { scores[i] - 0.1 * kls[i] } else { 0.0 };
            prop_assert!((sums[i] - want).abs() < 1e-4);
        }
    }
}
