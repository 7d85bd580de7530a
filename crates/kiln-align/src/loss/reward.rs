//! Reward-model objective (TRL's RewardTrainer): Bradley-Terry on the
//! scalar rewards of a chosen and a rejected reply, with an optional
//! per-pair margin and optional reward centering (arXiv 2312.09244):
//!
//! `L = mean_i[ -log σ(r⁺_i - r⁻_i - m_i) ] + c · mean_i[ (r⁺_i + r⁻_i)² ]`
//!
//! Returns the loss, its gradient with respect to every reward, and the
//! figures TRL logs. Arithmetic in f64; `-log σ(x)` via a stable softplus.

/// The batch loss, its gradients and the logged figures.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardLoss {
    pub loss: f64,
    /// dL/dr⁺ per pair.
    pub d_chosen: Vec<f32>,
    /// dL/dr⁻ per pair.
    pub d_rejected: Vec<f32>,
    /// Share of pairs with r⁺ > r⁻ (strict: a tie is not a win).
    pub accuracy: f64,
    /// mean(r⁺ - r⁻).
    pub margin: f64,
    pub mean_chosen: f64,
    pub mean_rejected: f64,
}

/// `-log σ(x)` = softplus(-x), without overflow for any finite x.
pub fn neg_log_sigmoid(x: f64) -> f64 {
    // softplus(y) = max(y, 0) + ln(1 + e^-|y|) with y = -x
    let y = -x;
    y.max(0.0) + (-y.abs()).exp().ln_1p()
}

/// σ(x), stable for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Bradley-Terry loss over pairs (`chosen[i]`, `rejected[i]`), `margins`
/// per pair (None: 0), centering coefficient `center` (0: off).
pub fn bradley_terry(
    chosen: &[f32],
    rejected: &[f32],
    margins: Option<&[f32]>,
    center: f32,
) -> Result<RewardLoss, String> {
    let n = chosen.len();
    if n == 0 {
        return Err("the reward loss needs at least one pair".into());
    }
    if rejected.len() != n {
        return Err(format!(
            "{n} chosen rewards but {} rejected ones",
            rejected.len()
        ));
    }
    if let Some(m) = margins {
        if m.len() != n {
            return Err(format!("{n} pairs but {} margins", m.len()));
        }
    }
    if !(center.is_finite() && center >= 0.0) {
        return Err(format!(
            "the centering coefficient must be >= 0, got {center}"
        ));
    }
    let inv_n = 1.0 / n as f64;
    let c = center as f64;
    let mut loss = 0.0;
    let mut d_chosen = Vec::with_capacity(n);
    let mut d_rejected = Vec::with_capacity(n);
    let (mut wins, mut margin, mut sum_c, mut sum_r) = (0usize, 0.0, 0.0, 0.0);
    for i in 0..n {
        let (rc, rr) = (chosen[i] as f64, rejected[i] as f64);
        let m = margins.map_or(0.0, |m| m[i] as f64);
        let d = rc - rr - m;
        let s = rc + rr;
        loss += inv_n * (neg_log_sigmoid(d) + c * s * s);
        // d/dd[-log σ(d)] = -σ(-d); d/ds[c s²] = 2 c s.
        let g = -sigmoid(-d);
        let center_grad = 2.0 * c * s;
        d_chosen.push((inv_n * (g + center_grad)) as f32);
        d_rejected.push((inv_n * (-g + center_grad)) as f32);
        wins += usize::from(rc > rr);
        margin += rc - rr;
        sum_c += rc;
        sum_r += rr;
    }
    Ok(RewardLoss {
        loss,
        d_chosen,
        d_rejected,
        accuracy: wins as f64 * inv_n,
        margin: margin * inv_n,
        mean_chosen: sum_c * inv_n,
        mean_rejected: sum_r * inv_n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_values() {
        // equal rewards: ln 2, accuracy 0 (strict), gradients ∓1/2 per pair / n
        let out = bradley_terry(&[0.5, -1.0], &[0.5, -1.0], None, 0.0).unwrap();
        assert!((out.loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(out.accuracy, 0.0);
        assert_eq!(out.d_chosen, vec![-0.25, -0.25]);
        assert_eq!(out.d_rejected, vec![0.25, 0.25]);
        // one pair, r+ - r- = 2: loss ln(1 + e^-2) = 0.126928011...
        let out = bradley_terry(&[1.5], &[-0.5], None, 0.0).unwrap();
        assert!(
            (out.loss - 0.126_928_011_042_973).abs() < 1e-9,
            "{}",
            out.loss
        );
        assert!((out.d_chosen[0] as f64 + 0.119_202_922_022_118).abs() < 1e-7);
        assert_eq!(out.accuracy, 1.0);
        assert!((out.margin - 2.0).abs() < 1e-12);
        // margin 2 brings it back to ln 2
        let out = bradley_terry(&[1.5], &[-0.5], Some(&[2.0]), 0.0).unwrap();
        assert!((out.loss - std::f64::consts::LN_2).abs() < 1e-12);
        // centering: c (r+ + r-)^2 = 0.01 * 1 added (0.01 is an f32)
        let out = bradley_terry(&[1.5], &[-0.5], Some(&[2.0]), 0.01).unwrap();
        assert!((out.loss - (std::f64::consts::LN_2 + 0.01)).abs() < 1e-8);
        assert!((out.d_chosen[0] as f64 - (-0.5 + 0.02)).abs() < 1e-7);
        assert!((out.d_rejected[0] as f64 - (0.5 + 0.02)).abs() < 1e-7);
    }

    #[test]
    fn extreme_rewards_stay_finite() {
        let out = bradley_terry(&[-500.0], &[500.0], None, 0.0).unwrap();
        assert!((out.loss - 1000.0).abs() < 1e-9);
        assert_eq!(out.d_chosen[0], -1.0);
        let out = bradley_terry(&[500.0], &[-500.0], None, 0.0).unwrap();
        assert!(out.loss >= 0.0 && out.loss < 1e-300);
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(bradley_terry(&[], &[], None, 0.0).is_err());
        assert!(bradley_terry(&[1.0], &[1.0, 2.0], None, 0.0).is_err());
        assert!(bradley_terry(&[1.0], &[1.0], Some(&[]), 0.0).is_err());
        assert!(bradley_terry(&[1.0], &[1.0], None, -1.0).is_err());
    }

    fn loss_of(c: &[f32], r: &[f32], m: &[f32], center: f32) -> f64 {
        bradley_terry(c, r, Some(m), center).unwrap().loss
    }

    proptest! {
        /// Analytic gradients match central finite differences.
        #[test]
        fn gradients_match_finite_differences(
            pairs in prop::collection::vec((-4.0f32..4.0, -4.0f32..4.0, -1.0f32..1.0), 1..6),
            center in prop::sample::select(vec![0.0f32, 0.01, 0.3]),
        ) {
            let c: Vec<f32> = pairs.iter().map(|p| p.0).collect();
            let r: Vec<f32> = pairs.iter().map(|p| p.1).collect();
            let m: Vec<f32> = pairs.iter().map(|p| p.2).collect();
            let out = bradley_terry(&c, &r, Some(&m), center).unwrap();
            let h = 1e-3f32;
            for i in 0..c.len() {
                let (mut cp, mut cm) = (c.clone(), c.clone());
                cp[i] += h;
                cm[i] -= h;
                // divide by the step the f32 inputs really took
                let fd = (loss_of(&cp, &r, &m, center) - loss_of(&cm, &r, &m, center))
                    / (cp[i] as f64 - cm[i] as f64);
                prop_assert!((fd - out.d_chosen[i] as f64).abs() < 1e-4,
                    "chosen {i}: fd {fd} vs {}", out.d_chosen[i]);
                let (mut rp, mut rm) = (r.clone(), r.clone());
                rp[i] += h;
                rm[i] -= h;
                let fd = (loss_of(&c, &rp, &m, center) - loss_of(&c, &rm, &m, center))
                    / (rp[i] as f64 - rm[i] as f64);
                prop_assert!((fd - out.d_rejected[i] as f64).abs() < 1e-4,
                    "rejected {i}: fd {fd} vs {}", out.d_rejected[i]);
            }
        }
    }
}
