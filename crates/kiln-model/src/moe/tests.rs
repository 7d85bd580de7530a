//! The layer's contracts on the CPU backend: finite differences through
//! the router, the balancing terms, capacity drops, the bias update, the
//! dense limit k = E, and routing properties (proptest).

use kiln_abi::{BackendBox, BackendExt, BufId};
use proptest::prelude::*;

use super::{
    aux_probs, route, switch_aux_loss, update_selection_bias, Dispatch, GateFn, MoeConfig,
    MoeLayer, MoeStats, ROUTER,
};
use crate::Rng;

const C: usize = 8;
const H: usize = 16;
const N: usize = 6;

fn backend() -> BackendBox {
    kiln_tensor::cpu_backend(Some(1))
}

fn random(rng: &mut Rng, len: usize, std: f32) -> Vec<f32> {
    (0..len).map(|_| std * rng.normal()).collect()
}

/// A layer with random weights and biases (router std `router_std`).
fn layer(be: &mut BackendBox, cfg: MoeConfig, seed: u64, router_std: f32) -> MoeLayer {
    let mut rng = Rng::new(seed);
    let values: Vec<Vec<f32>> = super::param_specs(&cfg, "mlp")
        .iter()
        .map(|(name, shape)| {
            let len = shape.iter().product();
            let std = if name.ends_with("gate.weight") {
                router_std
            } else if shape.len() == 2 {
                0.3
            } else {
                0.1
            };
            random(&mut rng, len, std)
        })
        .collect();
    MoeLayer::from_values(be, cfg, "mlp", values, true).unwrap()
}

/// Forward on host rows `x`: (y, stats, chosen experts), state freed.
fn forward(be: &mut BackendBox, layer: &MoeLayer, x: &[f32]) -> (Vec<f32>, MoeStats, Vec<u32>) {
    let n = x.len() / layer.config.n_embd;
    let xb = be.from_f32(x).unwrap();
    let yb = be.from_f32(&vec![0.0; x.len()]).unwrap();
    let fwd = layer.forward(be, xb, yb, n).unwrap();
    let y = be.download_f32(yb).unwrap();
    let (stats, chosen) = (fwd.stats.clone(), fwd.routing.chosen.clone());
    fwd.free(be).unwrap();
    be.free_buf(xb).unwrap();
    be.free_buf(yb).unwrap();
    (y, stats, chosen)
}

/// The objective the tests differentiate: `sum(y * w) + aux + z`, in f64.
fn objective(y: &[f32], w: &[f32], stats: &MoeStats) -> f64 {
    let dot: f64 = y.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum();
    dot + stats.aux_loss as f64 + stats.z_loss as f64
}

/// Backward of `objective` after a fresh forward: (dx, d router weight).
fn gradients(be: &mut BackendBox, layer: &MoeLayer, x: &[f32], w: &[f32]) -> (Vec<f32>, Vec<f32>) {
    layer.zero_grad(be).unwrap();
    let n = x.len() / layer.config.n_embd;
    let xb = be.from_f32(x).unwrap();
    let yb = be.from_f32(&vec![0.0; x.len()]).unwrap();
    let dy = be.from_f32(w).unwrap();
    let dx = be.from_f32(&vec![0.0; x.len()]).unwrap();
    let fwd = layer.forward(be, xb, yb, n).unwrap();
    layer.backward(be, fwd, dy, dx, 1.0).unwrap();
    let dxv = be.download_f32(dx).unwrap();
    let dwr = be.download_f32(layer.params[ROUTER].grad.unwrap()).unwrap();
    for b in [xb, yb, dy, dx] {
        be.free_buf(b).unwrap();
    }
    (dxv, dwr)
}

fn set_values(be: &mut BackendBox, buf: BufId, v: &[f32]) {
    be.upload_f32(buf, v).unwrap();
}

/// Central differences of `objective` in every router weight (and every
/// input entry) against the backward, with the expert choice checked
/// unchanged at each probe.
fn check_router_finite_differences(cfg: MoeConfig, seed: u64) {
    let mut be = backend();
    let layer = layer(&mut be, cfg, seed, 0.6);
    let mut rng = Rng::new(seed + 1);
    let x = random(&mut rng, N * C, 1.0);
    let w = random(&mut rng, N * C, 1.0);
    let (_, _, chosen) = forward(&mut be, &layer, &x);
    let (dx, dwr) = gradients(&mut be, &layer, &x, &w);

    let eps = 1e-2f32;
    let wr_buf = layer.params[ROUTER].value;
    let wr = be.download_f32(wr_buf).unwrap();
    let mut fd_wr = vec![0.0f32; wr.len()];
    for i in 0..wr.len() {
        let probe = |delta: f32, be: &mut BackendBox| {
            let mut v = wr.clone();
            v[i] += delta;
            set_values(be, wr_buf, &v);
            let (y, stats, ch) = forward(be, &layer, &x);
            assert_eq!(ch, chosen, "router probe {i} changed the selection");
            objective(&y, &w, &stats)
        };
        let (up, down) = (probe(eps, &mut be), probe(-eps, &mut be));
        fd_wr[i] = ((up - down) / (2.0 * eps as f64)) as f32;
    }
    set_values(&mut be, wr_buf, &wr);
    let mut fd_x = vec![0.0f32; x.len()];
    for i in 0..x.len() {
        let probe = |delta: f32, be: &mut BackendBox| {
            let mut v = x.clone();
            v[i] += delta;
            let (y, stats, ch) = forward(be, &layer, &v);
            assert_eq!(ch, chosen, "input probe {i} changed the selection");
            objective(&y, &w, &stats)
        };
        let (up, down) = (probe(eps, &mut be), probe(-eps, &mut be));
        fd_x[i] = ((up - down) / (2.0 * eps as f64)) as f32;
    }
    for (what, got, want) in [("router", &dwr, &fd_wr), ("x", &dx, &fd_x)] {
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want.iter())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(scale > 1e-3, "{what}: no gradient to check");
        assert!(
            err <= 2e-3 * scale,
            "{what}: backward vs finite differences off by {err} (max {scale})"
        );
    }
}

#[test]
fn router_gradient_matches_finite_differences_through_the_gates() {
    // Gate path only: no balancing terms.
    let mut cfg = MoeConfig::new(C, H, 4, 2);
    cfg.aux_loss_coef = 0.0;
    cfg.z_loss_coef = 0.0;
    check_router_finite_differences(cfg.clone(), 7);
    cfg.gate = GateFn::Sigmoid;
    check_router_finite_differences(cfg, 8);
}

#[test]
fn router_gradient_matches_finite_differences_with_aux_and_z_losses() {
    let mut cfg = MoeConfig::new(C, H, 4, 1);
    cfg.aux_loss_coef = 0.5;
    cfg.z_loss_coef = 0.1;
    cfg.n_shared = 1;
    check_router_finite_differences(cfg.clone(), 11);
    cfg.gate = GateFn::Sigmoid;
    cfg.top_k = 2;
    cfg.normalize_topk = true;
    check_router_finite_differences(cfg, 12);
}

#[test]
fn switch_aux_loss_is_alpha_at_uniform_routing_and_larger_when_skewed() {
    let (e, k, n, alpha) = (4, 2, 8, 0.01f32);
    let uniform_probs = vec![1.0 / e as f32; n * e];
    let uniform_load = vec![(n * k / e) as f32; e];
    let at_uniform = switch_aux_loss(&uniform_probs, &uniform_load, k, alpha);
    assert!((at_uniform - alpha).abs() < 1e-8, "{at_uniform} != {alpha}");

    // Half the probability and most of the slots on expert 0.
    let skewed_probs: Vec<f32> = (0..n * e)
        .map(|i| if i % e == 0 { 0.55 } else { 0.15 })
        .collect();
    let skewed_load = vec![8.0, 4.0, 2.0, 2.0];
    let skewed = switch_aux_loss(&skewed_probs, &skewed_load, k, alpha);
    assert!(skewed > alpha * 1.1, "skewed routing gave {skewed}");

    // Through the layer: a zero router gives uniform softmax scores, and
    // k = E sends every token to every expert.
    let mut be = backend();
    let mut cfg = MoeConfig::new(C, H, 4, 4);
    cfg.aux_loss_coef = alpha;
    let layer = layer(&mut be, cfg, 3, 0.0);
    let x = random(&mut Rng::new(4), N * C, 1.0);
    let (_, stats, _) = forward(&mut be, &layer, &x);
    assert!((stats.aux_loss - alpha).abs() < 1e-8, "{}", stats.aux_loss);
    assert_eq!(stats.load, vec![N as f32; 4]);
    // The z-loss of zero logits: beta * ln(E)^2.
    let want_z = 1e-3 * (4f32.ln()).powi(2);
    assert!((stats.z_loss - want_z).abs() < 1e-8);
}

#[test]
fn capacity_drops_slots_beyond_capacity_in_token_order_and_counts_them() {
    // Plan level: chosen [[0,1],[0,2],[0,1],[1,0]], capacity 2.
    let logits = [
        3.0, 2.0, 0.0, 0.0, //
        3.0, 0.0, 2.0, 0.0, //
        3.0, 2.0, 0.0, 0.0, //
        2.0, 3.0, 0.0, 0.0,
    ];
    let routing = route(&logits, 4, 2, GateFn::Softmax, true, None);
    assert_eq!(routing.chosen, vec![0, 1, 0, 2, 0, 1, 1, 0]);
    let plan = Dispatch::plan(&routing, Some(2));
    assert_eq!(plan.offsets, vec![0, 2, 4, 5, 5]);
    assert_eq!(plan.tokens, vec![0, 1, 0, 2, 1]);
    assert_eq!(plan.dropped, vec![2, 1, 0, 0]);

    // Layer level: every token prefers expert 0 (selection bias), capacity
    // ceil(6 * 1 * 1.0 / 4) = 2: tokens 0 and 1 are kept, 4 dropped.
    let mut be = backend();
    let mut cfg = MoeConfig::new(C, H, 4, 1);
    cfg.expert_bias = true;
    let mut dropless = layer(&mut be, cfg.clone(), 5, 0.1);
    dropless.selection_bias = vec![10.0, 0.0, 0.0, 0.0];
    let x = random(&mut Rng::new(6), N * C, 1.0);
    let (y_all, stats_all, _) = forward(&mut be, &dropless, &x);
    assert_eq!(stats_all.dropped, 0);
    dropless.config.capacity_factor = Some(1.0);
    let (y, stats, _) = forward(&mut be, &dropless, &x);
    assert_eq!(stats.capacity, Some(2));
    assert_eq!(stats.dropped, 4);
    assert_eq!(stats.dropped_per_expert, vec![4, 0, 0, 0]);
    assert_eq!(stats.load, vec![6.0, 0.0, 0.0, 0.0]);
    assert_eq!(&y[..2 * C], &y_all[..2 * C], "kept tokens unchanged");
    assert!(
        y[2 * C..].iter().all(|&v| v == 0.0),
        "dropped tokens add zero"
    );
    assert!(y_all[2 * C..].iter().any(|&v| v != 0.0));
}

#[test]
fn bias_update_moves_loads_toward_the_mean() {
    let mut bias = vec![0.0f32; 4];
    update_selection_bias(&mut bias, &[6.0, 2.0, 2.0, 2.0], 1e-3);
    assert_eq!(bias, vec![-1e-3, 1e-3, 1e-3, 1e-3]);
    update_selection_bias(&mut bias, &[3.0, 3.0, 3.0, 3.0], 1e-3);
    assert_eq!(bias, vec![-1e-3, 1e-3, 1e-3, 1e-3], "balanced: no change");

    // A router skewed to expert 0 (sigmoid, DeepSeek-V3 style) over 64
    // tokens; repeated updates spread the load.
    let mut be = backend();
    let mut cfg = MoeConfig::new(C, H, 4, 1);
    cfg.gate = GateFn::Sigmoid;
    cfg.expert_bias = true;
    cfg.bias_update_rate = 0.02;
    let mut layer = layer(&mut be, cfg, 9, 0.3);
    let mut wr = be.download_f32(layer.params[ROUTER].value).unwrap();
    wr[..C].iter_mut().for_each(|v| *v += 0.3); // expert 0's row
    be.upload_f32(layer.params[ROUTER].value, &wr).unwrap();
    let x: Vec<f32> = random(&mut Rng::new(10), 64 * C, 1.0)
        .iter()
        .map(|v| v + 0.5)
        .collect();
    let imbalance = |load: &[f32]| {
        let mean = load.iter().sum::<f32>() / load.len() as f32;
        load.iter().fold(0.0f32, |m, &l| m.max((l - mean).abs()))
    };
    let (_, first, _) = forward(&mut be, &layer, &x);
    let mut last = first.clone();
    for _ in 0..60 {
        layer.update_bias(&last.load).unwrap();
        last = forward(&mut be, &layer, &x).1;
    }
    assert!(
        imbalance(&last.load) < 0.5 * imbalance(&first.load),
        "loads {:?} -> {:?}",
        first.load,
        last.load
    );
    assert!(layer.update_bias(&[1.0]).is_err());
}

fn gelu_tanh(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// `W [out, in] @ v + b` in f64.
fn affine(w: &[f32], b: &[f32], v: &[f64]) -> Vec<f64> {
    w.chunks(v.len())
        .zip(b)
        .map(|(row, &bias)| {
            bias as f64 + row.iter().zip(v).map(|(&a, &x)| a as f64 * x).sum::<f64>()
        })
        .collect()
}

#[test]
fn dropless_k_equal_e_is_the_dense_softmax_weighted_sum() {
    let mut be = backend();
    let e = 4;
    let layer = layer(&mut be, MoeConfig::new(C, H, e, e), 13, 0.6);
    let x = random(&mut Rng::new(14), N * C, 1.0);
    let (y, stats, _) = forward(&mut be, &layer, &x);
    assert_eq!(stats.dropped, 0);
    let p: Vec<Vec<f32>> = layer
        .params
        .iter()
        .map(|p| be.download_f32(p.value).unwrap())
        .collect();
    let wr = &p[ROUTER];
    for t in 0..N {
        let row: Vec<f64> = x[t * C..(t + 1) * C].iter().map(|&v| v as f64).collect();
        let logits = affine(wr, &[0.0; 4], &row);
        let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        let mut dense = [0.0f64; C];
        for (ex, logit) in logits.iter().enumerate() {
            let gate = (logit - m).exp() / z;
            let i = |s| layer.expert_index(ex, s);
            let hidden: Vec<f64> = affine(&p[i(0)], &p[i(1)], &row)
                .into_iter()
                .map(gelu_tanh)
                .collect();
            let out = affine(&p[i(2)], &p[i(3)], &hidden);
            dense.iter_mut().zip(out).for_each(|(d, o)| *d += gate * o);
        }
        for (j, want) in dense.iter().enumerate() {
            let got = y[t * C + j] as f64;
            assert!(
                (got - want).abs() < 1e-5,
                "token {t} col {j}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn config_validation_names_the_problem() {
    let mut cfg = MoeConfig::new(C, H, 4, 5);
    assert!(cfg.validate().unwrap_err().to_string().contains("top_k"));
    cfg.top_k = 2;
    cfg.capacity_factor = Some(0.0);
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("capacity_factor"));
    cfg.capacity_factor = Some(1.25);
    assert_eq!(cfg.capacity(6), Some(4)); // ceil(6 * 2 * 1.25 / 4) = ceil(3.75)
    assert!(cfg.validate().is_ok());
    assert!(
        !MoeConfig::new(C, H, 4, 1).normalize_topk,
        "Switch top-1 keeps the raw gate"
    );
}

fn routing_case() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<f32>, bool)> {
    (1usize..7, 1usize..9).prop_flat_map(|(e, n)| {
        (
            Just(e),
            1..=e,
            proptest::collection::vec(-4.0f32..4.0, n * e),
            proptest::collection::vec(-0.5f32..0.5, e),
            any::<bool>(),
        )
    })
}

proptest! {
    #[test]
    fn chosen_experts_are_distinct_best_and_gates_sum_to_one(
        (e, k, logits, bias, sigmoid) in routing_case()
    ) {
        let gate = if sigmoid { GateFn::Sigmoid } else { GateFn::Softmax };
        let r = route(&logits, e, k, gate, true, Some(&bias));
        for t in 0..r.n {
            let chosen = &r.chosen[t * k..(t + 1) * k];
            let mut seen = vec![false; e];
            for &j in chosen {
                prop_assert!((j as usize) < e);
                prop_assert!(!seen[j as usize], "expert {} chosen twice", j);
                seen[j as usize] = true;
            }
            // No unchosen expert beats a chosen one on score + bias.
            let key = |j: usize| r.scores[t * e + j] + bias[j];
            let worst = chosen.iter().map(|&j| key(j as usize)).fold(f32::INFINITY, f32::min);
            for j in (0..e).filter(|&j| !seen[j]) {
                prop_assert!(key(j) <= worst);
            }
            let sum: f32 = r.gates[t * k..(t + 1) * k].iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-5, "gates sum to {}", sum);
            prop_assert!(r.gates[t * k..(t + 1) * k].iter().all(|&g| g > 0.0));
        }
        prop_assert_eq!(r.load().iter().sum::<f32>(), (r.n * k) as f32);
        // The aux loss's per-token probabilities are a distribution.
        let probs = aux_probs(&r);
        for row in probs.chunks(e) {
            prop_assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
