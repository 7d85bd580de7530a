//! Picking the next token from a row of logits: greedy, temperature, top-k
//! and nucleus (top-p) sampling. Shared by generation and evaluation.

use crate::Rng;

/// How [`crate::Gpt::generate`] and [`sample_token`] choose tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the k most likely tokens (k = 1 is greedy).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose mass reaches p.
    pub top_p: Option<f32>,
    pub seed: u64,
    /// Generation stops after emitting this token (it is returned).
    pub stop_token: Option<u32>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            max_new_tokens: 64,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 0,
            stop_token: None,
        }
    }
}

/// Index of the largest logit (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Picks one token id from `logits` (one row, real vocabulary) per `opts`.
/// Temperature 0 (or below), `top_k == Some(1)` and a non-finite temperature
/// are greedy and draw nothing from `rng`; otherwise exactly one `rng` draw.
pub fn sample_token(logits: &[f32], opts: &SampleOptions, rng: &mut Rng) -> u32 {
    assert!(!logits.is_empty(), "sample_token: empty logits row");
    let greedy = !(opts.temperature > 0.0 && opts.temperature.is_finite())
        || opts.top_k == Some(1)
        || opts.top_p.is_some_and(|p| p <= 0.0);
    if greedy {
        return argmax(logits);
    }
    // Candidates sorted by logit, most likely first (ties: lower id first).
    let mut order: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| !logits[i as usize].is_nan())
        .collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    if let Some(k) = opts.top_k {
        order.truncate(k.max(1));
    }
    if order.is_empty() {
        return 0;
    }
    // Softmax of logits / temperature over the kept candidates, in f64.
    let inv_t = 1.0 / opts.temperature as f64;
    let top = logits[order[0] as usize] as f64 * inv_t;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| (logits[i as usize] as f64 * inv_t - top).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = opts.top_p.filter(|&p| p < 1.0) {
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (i, &q) in probs.iter().enumerate() {
            mass += q;
            if mass >= p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
        let kept: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= kept);
    }
    let u = rng.next_f64();
    let mut acc = 0.0;
    for (&id, &q) in order.iter().zip(&probs) {
        acc += q;
        if u < acc {
            return id;
        }
    }
    *order.last().expect("non-empty")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> SampleOptions {
        SampleOptions {
            temperature,
            top_k,
            top_p,
            ..SampleOptions::default()
        }
    }

    const ROW: [f32; 6] = [0.1, 2.0, -1.0, 1.9, 0.0, 2.0];

    #[test]
    fn temperature_zero_and_top_k_one_are_argmax() {
        let mut rng = Rng::new(1);
        assert_eq!(argmax(&ROW), 1); // first of the tied maxima
        for _ in 0..50 {
            assert_eq!(sample_token(&ROW, &opts(0.0, None, None), &mut rng), 1);
            assert_eq!(sample_token(&ROW, &opts(5.0, Some(1), None), &mut rng), 1);
        }
    }

    #[test]
    fn top_k_never_leaves_the_k_best() {
        let mut rng = Rng::new(2);
        for _ in 0..500 {
            let tok = sample_token(&ROW, &opts(10.0, Some(3), None), &mut rng);
            assert!([1, 3, 5].contains(&tok), "{tok}");
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // probabilities ~ [0.5, 0.3, 0.15, 0.05]
        let row = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let mut rng = Rng::new(3);
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            seen[sample_token(&row, &opts(1.0, None, Some(0.75)), &mut rng) as usize] += 1;
        }
        // 0.5 + 0.3 >= 0.75: only tokens 0 and 1, renormalised to 5/8 and 3/8.
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        let frac = seen[0] as f64 / 4000.0;
        assert!((frac - 0.625).abs() < 0.03, "{frac}");
    }

    #[test]
    fn sampling_follows_the_softmax() {
        let row = [0.0f32, 1.0f32.ln() + 2f32.ln()]; // p = 1/3, 2/3
        let mut rng = Rng::new(4);
        let ones = (0..6000)
            .filter(|_| sample_token(&row, &opts(1.0, None, None), &mut rng) == 1)
            .count();
        let frac = ones as f64 / 6000.0;
        assert!((frac - 2.0 / 3.0).abs() < 0.025, "{frac}");
    }

    proptest::proptest! {
        /// Whatever the settings, the token is in range and among the top k.
        #[test]
        fn sampled_token_respects_top_k(
            row in proptest::collection::vec(-20f32..20.0, 1..40),
            temperature in 0f32..3.0,
            k in 1usize..8,
            p in 0.05f32..1.0,
            seed in 0u64..1000,
        ) {
            let mut rng = Rng::new(seed);
            let tok = sample_token(&row, &opts(temperature, Some(k), Some(p)), &mut rng) as usize;
            proptest::prop_assert!(tok < row.len());
            let better = row.iter().filter(|&&x| x > row[tok]).count();
            proptest::prop_assert!(better < k, "{} logits beat the sampled one", better);
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..64)
                .map(|_| sample_token(&ROW, &opts(1.5, Some(5), Some(0.95)), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }
}
