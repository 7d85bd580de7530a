//! The layer against PyTorch: `tests/fixtures/moe_tiny/reference.safetensors`
//! from `scripts/make_moe_fixtures.py` (objective `sum(y * dy) + aux + z`).
//! Forward within 1e-5 absolute, every gradient within 1e-4 of its largest
//! magnitude.

use std::collections::HashMap;

use kiln_abi::{BackendBox, BackendExt};
use safetensors::SafeTensors;

use super::{param_specs, GateFn, MoeConfig, MoeLayer};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/moe_tiny/reference.safetensors"
);

struct Fixture {
    tensors: HashMap<String, Vec<f32>>,
    cases: serde_json::Value,
}

fn load() -> Fixture {
    let bytes = std::fs::read(FIXTURE).expect("run scripts/make_moe_fixtures.py");
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let cases = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("cases"))
        .map(|s| serde_json::from_str(s).unwrap())
        .expect("fixture metadata names its cases");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, data)
        })
        .collect();
    Fixture { tensors, cases }
}

impl Fixture {
    fn get(&self, case: &str, name: &str) -> &[f32] {
        self.tensors
            .get(&format!("{case}.{name}"))
            .unwrap_or_else(|| panic!("fixture has no {case}.{name}"))
    }

    fn config(&self, case: &str) -> (MoeConfig, usize) {
        let all = &self.cases;
        let s = &all["cases"][case];
        let n = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
        let f = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
        let mut cfg = MoeConfig::new(n(&all["C"]), n(&all["H"]), n(&all["E"]), n(&s["k"]));
        cfg.gate = match s["gate"].as_str().unwrap() {
            "softmax" => GateFn::Softmax,
            _ => GateFn::Sigmoid,
        };
        cfg.normalize_topk = s["normalize"].as_bool().unwrap();
        cfg.n_shared = n(&s["shared"]);
        cfg.expert_bias = s["bias"].as_bool().unwrap();
        cfg.aux_loss_coef = f(&s["aux"]);
        cfg.z_loss_coef = f(&s["z"]);
        (cfg, n(&all["N"]))
    }
}

/// max |got - want| / max |want|.
fn rel_to_max(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    err / scale
}

fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
}

/// Runs one case; returns (forward error, worst gradient error, its name).
fn check_case(be: &mut BackendBox, fx: &Fixture, case: &str) -> (f32, f32, String) {
    let (cfg, n) = fx.config(case);
    let c = cfg.n_embd;
    let specs = param_specs(&cfg, "mlp");
    let values: Vec<&[f32]> = specs.iter().map(|(name, _)| fx.get(case, name)).collect();
    let mut layer = MoeLayer::from_values(be, cfg.clone(), "mlp", values, true).unwrap();
    layer.selection_bias = fx.get(case, "bias").to_vec();

    let x = be.from_f32(fx.get(case, "x")).unwrap();
    let y = be.from_f32(&vec![0.0; n * c]).unwrap();
    let fwd = layer.forward(be, x, y, n).unwrap();
    let chosen: Vec<f32> = fwd.routing.chosen.iter().map(|&j| j as f32).collect();
    assert_eq!(chosen, fx.get(case, "chosen"), "{case}: expert choice");
    assert_eq!(fwd.stats.load, fx.get(case, "load"), "{case}: load");
    let y_err = max_abs_diff(&be.download_f32(y).unwrap(), fx.get(case, "y"));
    let aux_err = (fwd.stats.aux_loss - fx.get(case, "aux")[0]).abs();
    let z_err = (fwd.stats.z_loss - fx.get(case, "z")[0]).abs();
    let fwd_err = y_err.max(aux_err).max(z_err);

    let dy = be.from_f32(fx.get(case, "dy")).unwrap();
    let dx = be.from_f32(&vec![0.0; n * c]).unwrap();
    layer.backward(be, fwd, dy, dx, 1.0).unwrap();
    let mut worst = (
        rel_to_max(&be.download_f32(dx).unwrap(), fx.get(case, "grad.x")),
        "x".to_string(),
    );
    for p in &layer.params {
        let got = be.download_f32(p.grad.unwrap()).unwrap();
        let err = rel_to_max(&got, fx.get(case, &format!("grad.{}", p.name)));
        if err > worst.0 {
            worst = (err, p.name.clone());
        }
    }
    for b in [x, y, dy, dx] {
        be.free_buf(b).unwrap();
    }
    layer.free(be).unwrap();
    (fwd_err, worst.0, worst.1)
}

#[test]
fn matches_pytorch_forward_and_every_gradient() {
    let fx = load();
    let mut be = kiln_tensor::cpu_backend(Some(1));
    for case in ["softmax_top2", "sigmoid_top1", "sigmoid_top2"] {
        let (fwd_err, grad_err, worst) = check_case(&mut be, &fx, case);
        eprintln!("{case}: forward max abs err {fwd_err:.2e}, worst grad rel-to-max {grad_err:.2e} ({worst})");
        assert!(fwd_err <= 1e-5, "{case}: forward off by {fwd_err}");
        assert!(
            grad_err <= 1e-4,
            "{case}: grad of {worst} off by {grad_err} of its max"
        );
    }
}
