//! Preference losses on per-sequence log-probs: DPO (`sigmoid`), robust DPO,
//! IPO, hinge and SimPO, each with its gradient with respect to the policy's
//! summed completion log-probs, plus the implicit rewards that are logged.
//!
//! Formulas follow TRL (DPOTrainer `loss_type`, CPOTrainer `simpo`). With
//! `s+ = logp(y+) - ref_logp(y+)`, `s- = logp(y-) - ref_logp(y-)` and
//! `Δ = s+ - s-` (log-probs summed over completion tokens):
//!
//! | kind     | per-pair loss                                                     |
//! |----------|-------------------------------------------------------------------|
//! | sigmoid  | `-log σ(βΔ)`                                                      |
//! | robust   | `[-(1-ε) log σ(βΔ) + ε log σ(-βΔ)] / (1-2ε)`, ε = label smoothing |
//! | hinge    | `max(0, 1 - βΔ)`                                                  |
//! | ipo      | `(Δ̄ - 1/(2β))²`, Δ̄ from log-probs averaged over tokens            |
//! | simpo    | `-log σ(β(l̄p(y+) - l̄p(y-)) - γ)`, averaged log-probs, no reference |
//!
//! The batch loss is the mean over pairs. Arithmetic is in f64 so that the
//! loss at Δ = 0 is ln 2 to the last bit of an f32.

use std::fmt;

/// Which preference objective to optimise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PreferenceLoss {
    /// DPO (Rafailov et al. 2023): `-log σ(βΔ)`.
    Sigmoid,
    /// Robust DPO (Chowdhury et al. 2024) for labels flipped with probability
    /// `label_smoothing` in [0, 0.5).
    Robust { label_smoothing: f64 },
    /// IPO (Azar et al. 2023) on token-averaged log-ratios.
    Ipo,
    /// SLiC / RSO hinge: `max(0, 1 - βΔ)`.
    Hinge,
    /// SimPO (Meng et al. 2024): length-normalised, margin `gamma`, no reference.
    SimPo { gamma: f64 },
}

impl PreferenceLoss {
    /// The names accepted by `--loss`.
    pub const NAMES: [&'static str; 5] = ["sigmoid", "robust", "ipo", "hinge", "simpo"];

    /// Parses a `--loss` name; robust and SimPO take their extra parameter here.
    pub fn from_name(
        name: &str,
        label_smoothing: f64,
        simpo_gamma: f64,
    ) -> Result<Self, LossConfigError> {
        match name {
            "sigmoid" | "dpo" => Ok(Self::Sigmoid),
            "robust" => Ok(Self::Robust { label_smoothing }),
            "ipo" => Ok(Self::Ipo),
            "hinge" => Ok(Self::Hinge),
            "simpo" => Ok(Self::SimPo { gamma: simpo_gamma }),
            other => Err(LossConfigError(format!(
                "unknown preference loss {other:?}; valid: {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Sigmoid => "sigmoid",
            Self::Robust { .. } => "robust",
            Self::Ipo => "ipo",
            Self::Hinge => "hinge",
            Self::SimPo { .. } => "simpo",
        }
    }

    /// Whether the objective needs reference log-probs (all but SimPO).
    pub fn uses_reference(&self) -> bool {
        !matches!(self, Self::SimPo { .. })
    }
}

/// A bad loss setting (β <= 0, ε outside [0, 0.5), a zero length, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct LossConfigError(pub String);

impl fmt::Display for LossConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LossConfigError {}

/// The numbers of one preference pair. Log-probs are summed over the
/// completion tokens; `*_len` count those tokens (used by IPO and SimPO).
/// Reference fields are ignored by SimPO.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PairLogps {
    pub policy_chosen: f64,
    pub policy_rejected: f64,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
    pub chosen_len: usize,
    pub rejected_len: usize,
}

/// d(batch loss) / d(policy summed log-prob) for one pair.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PairGrad {
    pub chosen: f64,
    pub rejected: f64,
}

/// Margins this small are rounding noise, not a preference: the reference
/// log-probs come from a separate forward pass, so at step 0 the policy's
/// margin is ~1e-18 rather than exactly 0, and a strict `>` would count half
/// of those as wins.
pub const ACCURACY_TOLERANCE: f64 = 1e-6;

/// Batch means of the implicit rewards `β·(logp - ref_logp)` (SimPO: `β·logp/len`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RewardStats {
    pub chosen: f64,
    pub rejected: f64,
    pub margins: f64,
    /// Share of pairs with reward(chosen) - reward(rejected) above
    /// [`ACCURACY_TOLERANCE`] (ties and float noise count 0).
    pub accuracies: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PreferenceOutput {
    /// Mean loss over the pairs.
    pub loss: f64,
    /// Per-pair gradients of the mean loss, in input order.
    pub grads: Vec<PairGrad>,
    pub rewards: RewardStats,
}

/// RPO (Pang et al. 2024; TRL's `rpo_alpha`): adds `weight` times the mean
/// over pairs of each chosen completion's per-token negative log-likelihood
/// to the loss and its gradients. It keeps the chosen replies likely rather
/// than only widening the margin; without it a small policy learns to make
/// every reply short (both log-probs fall, the rejected one faster).
pub fn add_chosen_nll(out: &mut PreferenceOutput, weight: f64, pairs: &[PairLogps]) {
    if weight == 0.0 {
        return;
    }
    let n = pairs.len() as f64;
    for (g, p) in out.grads.iter_mut().zip(pairs) {
        let len = p.chosen_len.max(1) as f64;
        out.loss += weight * (-p.policy_chosen / len) / n;
        g.chosen -= weight / (len * n);
    }
}

/// `log σ(x)`, stable for large |x|.
fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Loss of one pair as a function of its logit `z`, and dL/dz.
fn logistic_loss(z: f64) -> (f64, f64) {
    (-log_sigmoid(z), -sigmoid(-z))
}

fn check(kind: PreferenceLoss, beta: f64, pairs: &[PairLogps]) -> Result<(), LossConfigError> {
    if !(beta.is_finite() && beta > 0.0) {
        return Err(LossConfigError(format!(
            "beta must be a positive number, got {beta}"
        )));
    }
    if let PreferenceLoss::Robust { label_smoothing } = kind {
        if !(0.0..0.5).contains(&label_smoothing) {
            return Err(LossConfigError(format!(
                "robust loss needs label_smoothing in [0, 0.5), got {label_smoothing}"
            )));
        }
    }
    if let PreferenceLoss::SimPo { gamma } = kind {
        if !gamma.is_finite() {
            return Err(LossConfigError(format!(
                "simpo gamma must be finite, got {gamma}"
            )));
        }
    }
    if pairs.is_empty() {
        return Err(LossConfigError("no preference pairs in the batch".into()));
    }
    if matches!(kind, PreferenceLoss::Ipo | PreferenceLoss::SimPo { .. }) {
        if let Some(i) = pairs
            .iter()
            .position(|p| p.chosen_len == 0 || p.rejected_len == 0)
        {
            return Err(LossConfigError(format!(
                "pair {i} has an empty completion; {} averages log-probs over tokens",
                kind.name()
            )));
        }
    }
    Ok(())
}

/// The batch loss, its gradient with respect to every policy log-prob, and
/// the logged reward statistics.
pub fn preference_loss(
    kind: PreferenceLoss,
    beta: f64,
    pairs: &[PairLogps],
) -> Result<PreferenceOutput, LossConfigError> {
    check(kind, beta, pairs)?;
    let n = pairs.len() as f64;
    let mut loss = 0.0;
    let mut grads = Vec::with_capacity(pairs.len());
    let mut rewards = RewardStats::default();
    for p in pairs {
        let s_chosen = p.policy_chosen - p.ref_chosen;
        let s_rejected = p.policy_rejected - p.ref_rejected;
        let delta = s_chosen - s_rejected;
        // (pair loss, dL/dpolicy_chosen, dL/dpolicy_rejected)
        let (l, dc, dr) = match kind {
            PreferenceLoss::Sigmoid => {
                let (l, dz) = logistic_loss(beta * delta);
                (l, beta * dz, -beta * dz)
            }
            PreferenceLoss::Robust { label_smoothing: e } => {
                let z = beta * delta;
                let l = (-(1.0 - e) * log_sigmoid(z) + e * log_sigmoid(-z)) / (1.0 - 2.0 * e);
                let dz = (-(1.0 - e) * sigmoid(-z) - e * sigmoid(z)) / (1.0 - 2.0 * e);
                (l, beta * dz, -beta * dz)
            }
            PreferenceLoss::Hinge => {
                let z = beta * delta;
                // relu'(0) = 0, as in PyTorch.
                let dz = if 1.0 - z > 0.0 { -1.0 } else { 0.0 };
                ((1.0 - z).max(0.0), beta * dz, -beta * dz)
            }
            PreferenceLoss::Ipo => {
                let (lc, lr) = (p.chosen_len as f64, p.rejected_len as f64);
                let avg_delta = s_chosen / lc - s_rejected / lr;
                let h = avg_delta - 1.0 / (2.0 * beta);
                (h * h, 2.0 * h / lc, -2.0 * h / lr)
            }
            PreferenceLoss::SimPo { gamma } => {
                let (lc, lr) = (p.chosen_len as f64, p.rejected_len as f64);
                let z = beta * (p.policy_chosen / lc - p.policy_rejected / lr) - gamma;
                let (l, dz) = logistic_loss(z);
                (l, beta * dz / lc, -beta * dz / lr)
            }
        };
        loss += l;
        grads.push(PairGrad {
            chosen: dc / n,
            rejected: dr / n,
        });
        let (rc, rr) = match kind {
            PreferenceLoss::SimPo { .. } => (
                beta * p.policy_chosen / p.chosen_len as f64,
                beta * p.policy_rejected / p.rejected_len as f64,
            ),
            _ => (beta * s_chosen, beta * s_rejected),
        };
        rewards.chosen += rc;
        rewards.rejected += rr;
        rewards.margins += rc - rr;
        rewards.accuracies += if rc - rr > ACCURACY_TOLERANCE {
            1.0
        } else {
            0.0
        };
    }
    rewards.chosen /= n;
    rewards.rejected /= n;
    rewards.margins /= n;
    rewards.accuracies /= n;
    Ok(PreferenceOutput {
        loss: loss / n,
        grads,
        rewards,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [PreferenceLoss; 5] = [
        PreferenceLoss::Sigmoid,
        PreferenceLoss::Robust {
            label_smoothing: 0.2,
        },
        PreferenceLoss::Ipo,
        PreferenceLoss::Hinge,
        PreferenceLoss::SimPo { gamma: 0.5 },
    ];

    fn pair(pc: f64, pr: f64, rc: f64, rr: f64, lc: usize, lr: usize) -> PairLogps {
        PairLogps {
            policy_chosen: pc,
            policy_rejected: pr,
            ref_chosen: rc,
            ref_rejected: rr,
            chosen_len: lc,
            rejected_len: lr,
        }
    }

    #[test]
    fn chosen_nll_adds_its_mean_and_matches_finite_differences() {
        let pairs = [
            pair(-12.5, -20.0, -12.0, -19.0, 5, 7),
            pair(-3.0, -1.0, -2.5, -1.5, 2, 1),
        ];
        let total = |pairs: &[PairLogps]| {
            let mut out = preference_loss(PreferenceLoss::Sigmoid, 0.1, pairs).unwrap();
            add_chosen_nll(&mut out, 0.7, pairs);
            out
        };
        let base = preference_loss(PreferenceLoss::Sigmoid, 0.1, &pairs).unwrap();
        let out = total(&pairs);
        let want_nll = 0.7 * (12.5 / 5.0 + 3.0 / 2.0) / 2.0;
        assert!((out.loss - base.loss - want_nll).abs() < 1e-12);
        assert_eq!(out.rewards, base.rewards);
        let h = 1e-6;
        for i in 0..pairs.len() {
            let mut up = pairs;
            up[i].policy_chosen += h;
            let mut down = pairs;
            down[i].policy_chosen -= h;
            let fd = (total(&up).loss - total(&down).loss) / (2.0 * h);
            assert!(
                (fd - out.grads[i].chosen).abs() < 1e-8,
                "{fd} vs {:?}",
                out.grads[i]
            );
            assert_eq!(out.grads[i].rejected, base.grads[i].rejected);
        }
        let mut zero = base.clone();
        add_chosen_nll(&mut zero, 0.0, &pairs);
        assert_eq!(zero, base);
    }

    #[test]
    fn float_noise_margins_are_not_counted_as_wins() {
        // Policy off the reference by rounding noise only; then by a real margin.
        let noisy = [pair(-12.5, -20.0, -12.5 - 1e-15, -20.0, 5, 7)];
        let out = preference_loss(PreferenceLoss::Sigmoid, 0.1, &noisy).unwrap();
        assert!(out.rewards.margins > 0.0);
        assert_eq!(out.rewards.accuracies, 0.0);
        let real = [pair(-12.5, -20.0, -12.6, -20.0, 5, 7)];
        let out = preference_loss(PreferenceLoss::Sigmoid, 0.1, &real).unwrap();
        assert_eq!(out.rewards.accuracies, 1.0);
    }

    #[test]
    fn policy_equal_to_reference_gives_ln2_and_zero_rewards() {
        let pairs = [
            pair(-12.5, -20.0, -12.5, -20.0, 5, 7),
            pair(-3.0, -1.0, -3.0, -1.0, 2, 1),
        ];
        let out = preference_loss(PreferenceLoss::Sigmoid, 0.1, &pairs).unwrap();
        assert_eq!(out.loss, std::f64::consts::LN_2);
        assert_eq!(out.rewards, RewardStats::default());
        // d/dz -log σ(z) at 0 is -1/2; times β, over 2 pairs.
        assert!((out.grads[0].chosen + 0.1 * 0.5 / 2.0).abs() < 1e-15);
        assert_eq!(out.grads[0].chosen, -out.grads[0].rejected);
        // The robust loss is ln 2 at Δ = 0 for every ε (the two terms cancel to it).
        let robust = PreferenceLoss::Robust {
            label_smoothing: 0.3,
        };
        let out = preference_loss(robust, 0.1, &pairs).unwrap();
        assert!((out.loss - std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn known_values() {
        let p = [pair(-10.0, -14.0, -11.0, -13.0, 4, 2)];
        // Δ = 1 - (-1) = 2, βΔ = 0.2.
        let sig = preference_loss(PreferenceLoss::Sigmoid, 0.1, &p).unwrap();
        assert!((sig.loss - (1.0 + (-0.2f64).exp()).ln()).abs() < 1e-12);
        assert!((sig.rewards.chosen - 0.1).abs() < 1e-12);
        assert!((sig.rewards.rejected + 0.1).abs() < 1e-12);
        assert!((sig.rewards.margins - 0.2).abs() < 1e-12);
        assert_eq!(sig.rewards.accuracies, 1.0);
        let hinge = preference_loss(PreferenceLoss::Hinge, 0.1, &p).unwrap();
        assert!((hinge.loss - 0.8).abs() < 1e-12);
        // IPO: Δ̄ = 1/4 - (-1)/2 = 0.75; (0.75 - 5)^2.
        let ipo = preference_loss(PreferenceLoss::Ipo, 0.1, &p).unwrap();
        assert!((ipo.loss - 4.25f64.powi(2)).abs() < 1e-12);
        // SimPO: z = 2 * (-10/4 - -14/2) - 1 = 8.
        let simpo = preference_loss(PreferenceLoss::SimPo { gamma: 1.0 }, 2.0, &p).unwrap();
        assert!((simpo.loss - (1.0 + (-8.0f64).exp()).ln()).abs() < 1e-12);
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let p = [pair(-1.0, -1.0, -1.0, -1.0, 1, 0)];
        let e = preference_loss(PreferenceLoss::Ipo, 0.1, &p).unwrap_err();
        assert!(e.0.contains("empty completion"), "{e}");
        let ok = [pair(-1.0, -1.0, -1.0, -1.0, 1, 1)];
        assert!(preference_loss(PreferenceLoss::Sigmoid, 0.0, &ok)
            .unwrap_err()
            .0
            .contains("beta"));
        let r = PreferenceLoss::Robust {
            label_smoothing: 0.5,
        };
        assert!(preference_loss(r, 0.1, &ok)
            .unwrap_err()
            .0
            .contains("label_smoothing"));
        assert!(preference_loss(PreferenceLoss::Sigmoid, 0.1, &[]).is_err());
        let e = PreferenceLoss::from_name("kto", 0.0, 0.5).unwrap_err();
        assert!(e.0.contains("sigmoid, robust, ipo, hinge, simpo"), "{e}");
    }

    #[test]
    fn extreme_logits_stay_finite() {
        let p = [pair(0.0, -5000.0, 0.0, 0.0, 3, 3)];
        for kind in ALL {
            let out = preference_loss(kind, 1.0, &p).unwrap();
            assert!(out.loss.is_finite(), "{kind:?}");
            assert!(out.grads[0].chosen.is_finite(), "{kind:?}");
        }
        let bad = [pair(-5000.0, 0.0, 0.0, 0.0, 3, 3)];
        let out = preference_loss(PreferenceLoss::Sigmoid, 1.0, &bad).unwrap();
        assert!((out.loss - 5000.0).abs() < 1e-9);
    }

    /// tests/fixtures/dpo/losses.json (scripts/make_dpo_fixtures.py): every
    /// variant's loss, gradients and rewards from torch autograd in float64.
    #[test]
    fn every_variant_matches_the_pytorch_fixture() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/dpo/losses.json"
        );
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e}; run scripts/make_dpo_fixtures.py"));
        let f: serde_json::Value = serde_json::from_str(&text).unwrap();
        let nums = |k: &str| -> Vec<f64> {
            f[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let (pc, pr, rc, rr) = (
            nums("policy_chosen"),
            nums("policy_rejected"),
            nums("ref_chosen"),
            nums("ref_rejected"),
        );
        let (lc, lr) = (nums("chosen_len"), nums("rejected_len"));
        let pairs: Vec<PairLogps> = (0..pc.len())
            .map(|i| pair(pc[i], pr[i], rc[i], rr[i], lc[i] as usize, lr[i] as usize))
            .collect();
        let beta = f["beta"].as_f64().unwrap();
        let eps = f["label_smoothing"].as_f64().unwrap();
        let gamma = f["simpo_gamma"].as_f64().unwrap();
        let mut worst = 0f64;
        for name in PreferenceLoss::NAMES {
            let kind = PreferenceLoss::from_name(name, eps, gamma).unwrap();
            let want = &f["variants"][name];
            let got = preference_loss(kind, beta, &pairs).unwrap();
            let mut close = |what: &str, g: f64, w: f64| {
                let d = (g - w).abs();
                worst = worst.max(d / (1.0 + w.abs()));
                assert!(
                    d <= 1e-9 * (1.0 + w.abs()),
                    "{name} {what}: kiln {g} torch {w}"
                );
            };
            close("loss", got.loss, want["loss"].as_f64().unwrap());
            for (i, g) in got.grads.iter().enumerate() {
                close(
                    "grad chosen",
                    g.chosen,
                    want["grad_chosen"][i].as_f64().unwrap(),
                );
                close(
                    "grad rejected",
                    g.rejected,
                    want["grad_rejected"][i].as_f64().unwrap(),
                );
            }
            let r = got.rewards;
            close(
                "rewards/chosen",
                r.chosen,
                want["rewards_chosen"].as_f64().unwrap(),
            );
            close(
                "rewards/rejected",
                r.rejected,
                want["rewards_rejected"].as_f64().unwrap(),
            );
            close(
                "rewards/margins",
                r.margins,
                want["rewards_margins"].as_f64().unwrap(),
            );
            close(
                "rewards/accuracies",
                r.accuracies,
                want["rewards_accuracies"].as_f64().unwrap(),
            );
        }
        eprintln!("preference losses vs torch: max relative difference {worst:.2e}");
    }

    fn loss_at(kind: PreferenceLoss, beta: f64, pairs: &[PairLogps]) -> f64 {
        preference_loss(kind, beta, pairs).unwrap().loss
    }

    proptest! {
        /// Central finite differences of the batch loss match the analytic
        /// gradient for every variant (hinge away from its kink).
        #[test]
        fn gradients_match_finite_differences(
            raw in proptest::collection::vec(
                (-30.0f64..0.0, -30.0f64..0.0, -30.0f64..0.0, -30.0f64..0.0, 1usize..9, 1usize..9),
                1..5),
            beta in 0.05f64..2.0,
        ) {
            let pairs: Vec<PairLogps> =
                raw.iter().map(|&(a, b, c, d, lc, lr)| pair(a, b, c, d, lc, lr)).collect();
            for kind in ALL {
                let out = preference_loss(kind, beta, &pairs).unwrap();
                for i in 0..pairs.len() {
                    if kind == PreferenceLoss::Hinge {
                        let p = pairs[i];
                        let z = beta * ((p.policy_chosen - p.ref_chosen) - (p.policy_rejected - p.ref_rejected));
                        if (z - 1.0).abs() < 1e-3 { continue; }
                    }
                    let h = 1e-5;
                    for side in 0..2 {
                        let mut plus = pairs.clone();
                        let mut minus = pairs.clone();
                        if side == 0 {
                            plus[i].policy_chosen += h;
                            minus[i].policy_chosen -= h;
                        } else {
                            plus[i].policy_rejected += h;
                            minus[i].policy_rejected -= h;
                        }
                        let fd = (loss_at(kind, beta, &plus) - loss_at(kind, beta, &minus)) / (2.0 * h);
                        let an = if side == 0 { out.grads[i].chosen } else { out.grads[i].rejected };
                        prop_assert!((fd - an).abs() <= 1e-6 * (1.0 + an.abs()),
                            "{:?} pair {} side {}: fd {} analytic {}", kind, i, side, fd, an);
                    }
                }
            }
        }

        /// Raising the chosen log-prob never raises the loss (all variants are
        /// non-increasing in the margin), and DPO's loss is positive.
        #[test]
        fn loss_is_monotone_in_the_chosen_logp(
            pc in -30.0f64..0.0, pr in -30.0f64..0.0, rc in -30.0f64..0.0, rr in -30.0f64..0.0,
            beta in 0.05f64..2.0,
        ) {
            let p = [pair(pc, pr, rc, rr, 3, 4)];
            for kind in ALL {
                let out = preference_loss(kind, beta, &p).unwrap();
                if kind != PreferenceLoss::Ipo {
                    prop_assert!(out.grads[0].chosen <= 0.0, "{:?}", kind);
                    prop_assert!(out.grads[0].rejected >= 0.0, "{:?}", kind);
                }
                let robust = matches!(kind, PreferenceLoss::Robust { .. });
                prop_assert!(out.loss >= 0.0 || robust, "{:?}", kind);
            }
        }
    }
}
