//! kiln-optim on the CPU backend against scalar reference formulas.

use kiln_abi::{BackendBox, BackendExt};
use kiln_optim::{clip_scale, AdamW, AdamWConfig, OptimError, ParamRef};

fn backend() -> BackendBox {
    kiln_tensor::cpu_backend(Some(1))
}

/// torch.optim.AdamW (foreach=False) for one scalar, written out in f64:
/// p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
/// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
struct ScalarAdamW {
    p: f64,
    m: f64,
    v: f64,
}

impl ScalarAdamW {
    fn step(&mut self, g: f64, lr: f64, wd: f64, c: &AdamWConfig, t: i32) {
        let (b1, b2, eps) = (c.beta1 as f64, c.beta2 as f64, c.eps as f64);
        self.p *= 1.0 - lr * wd;
        self.m = b1 * self.m + (1.0 - b1) * g;
        self.v = b2 * self.v + (1.0 - b2) * g * g;
        let denom = self.v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
        self.p -= lr / (1.0 - b1.powi(t)) * self.m / denom;
    }
}

fn param(be: &mut BackendBox, values: &[f32], decay: bool) -> ParamRef {
    ParamRef {
        value: be.from_f32(values).unwrap(),
        grad: be.from_f32(&vec![0.0; values.len()]).unwrap(),
        value_16: None,
        len: values.len(),
        decay,
    }
}

#[test]
fn adamw_matches_the_pytorch_formula_with_decay_only_where_flagged() {
    let mut be = backend();
    let cfg = AdamWConfig::default();
    let init_w = [0.5f32, -1.25, 2.0, 0.0, 3.0];
    let init_b = [0.1f32, -0.2, 0.3];
    let params = [
        param(&mut be, &init_w, true),
        param(&mut be, &init_b, false),
    ];
    let mut opt = AdamW::new(&mut be, &params, cfg.clone()).unwrap();
    let mut refs: Vec<Vec<ScalarAdamW>> = [&init_w[..], &init_b[..]]
        .iter()
        .map(|v| {
            v.iter()
                .map(|&p| ScalarAdamW {
                    p: p as f64,
                    m: 0.0,
                    v: 0.0,
                })
                .collect()
        })
        .collect();
    let grad_scale = 0.5f32;
    for t in 1..=12 {
        let lr = 1e-2 * t as f32;
        for (pi, p) in params.iter().enumerate() {
            let g: Vec<f32> = (0..p.len)
                .map(|i| ((t * 7 + i as i32 * 3 + pi as i32) % 11) as f32 * 0.3 - 1.5)
                .collect();
            be.upload_f32(p.grad, &g).unwrap();
            let wd = if p.decay {
                cfg.weight_decay as f64
            } else {
                0.0
            };
            for (r, &gi) in refs[pi].iter_mut().zip(&g) {
                r.step(gi as f64 * grad_scale as f64, lr as f64, wd, &cfg, t);
            }
        }
        opt.step(&mut be, &params, lr, grad_scale).unwrap();
        assert_eq!(opt.step_count(), t as u64);
    }
    for (pi, p) in params.iter().enumerate() {
        let got = be.download_f32(p.value).unwrap();
        for (g, r) in got.iter().zip(&refs[pi]) {
            assert!(
                (*g as f64 - r.p).abs() <= 1e-5 * r.p.abs().max(1.0),
                "param {pi}: {g} vs {}",
                r.p
            );
        }
    }
    // A bias with zero gradient and no decay does not move; a decayed weight shrinks.
    let still = param(&mut be, &[1.0], false);
    let shrink = param(&mut be, &[1.0], true);
    let mut opt = AdamW::new(&mut be, &[still, shrink], cfg).unwrap();
    opt.step(&mut be, &[still, shrink], 0.1, 1.0).unwrap();
    assert_eq!(be.download_f32(still.value).unwrap(), vec![1.0]);
    assert!((be.download_f32(shrink.value).unwrap()[0] - 0.99).abs() < 1e-7);
}

#[test]
fn state_export_import_resumes_exactly() {
    let mut be = backend();
    let p = param(&mut be, &[1.0, 2.0, 3.0], true);
    be.upload_f32(p.grad, &[0.3, -0.1, 0.7]).unwrap();
    let mut a = AdamW::new(&mut be, &[p], AdamWConfig::default()).unwrap();
    a.step(&mut be, &[p], 1e-2, 1.0).unwrap();
    let state = a.export_state(&mut be).unwrap();
    assert_eq!(state.step, 1);
    let snapshot = be.download_f32(p.value).unwrap();

    a.step(&mut be, &[p], 1e-2, 1.0).unwrap();
    let straight = be.download_f32(p.value).unwrap();

    be.upload_f32(p.value, &snapshot).unwrap();
    let mut b = AdamW::new(&mut be, &[p], AdamWConfig::default()).unwrap();
    b.import_state(&mut be, &state).unwrap();
    b.step(&mut be, &[p], 1e-2, 1.0).unwrap();
    assert_eq!(be.download_f32(p.value).unwrap(), straight);
    assert_eq!(b.step_count(), 2);

    let mut wrong = state.clone();
    wrong.m[0].pop();
    assert!(matches!(
        b.import_state(&mut be, &wrong),
        Err(OptimError::Mismatch(_))
    ));
    assert!(matches!(
        b.step(&mut be, &[p, p], 1e-2, 1.0),
        Err(OptimError::Mismatch(_))
    ));
}

#[test]
fn clip_scale_is_the_global_norm_factor() {
    let mut be = backend();
    let a = param(&mut be, &[0.0; 2], true);
    let b = param(&mut be, &[0.0; 1], false);
    be.upload_f32(a.grad, &[3.0, 0.0]).unwrap();
    be.upload_f32(b.grad, &[4.0]).unwrap();
    let (norm, scale) = clip_scale(&mut be, &[a, b], Some(1.0)).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    assert!((scale as f64 - 1.0 / (5.0 + 1e-6)).abs() < 1e-7);
    let (_, scale) = clip_scale(&mut be, &[a, b], Some(10.0)).unwrap();
    assert_eq!(scale, 1.0);
    let (norm, scale) = clip_scale(&mut be, &[a, b], None).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    assert_eq!(scale, 1.0);
    assert!(matches!(
        clip_scale(&mut be, &[a, b], Some(0.0)),
        Err(OptimError::Config(_))
    ));

    be.upload_f32(b.grad, &[f32::NAN]).unwrap();
    match clip_scale(&mut be, &[a, b], Some(1.0)) {
        Err(OptimError::NonFiniteGradNorm { norm }) => assert!(norm.is_nan()),
        other => panic!("expected NonFiniteGradNorm, got {other:?}"),
    }
    be.upload_f32(b.grad, &[f32::INFINITY]).unwrap();
    let e = clip_scale(&mut be, &[a, b], None).unwrap_err().to_string();
    assert!(e.contains("not finite"), "{e}");
}
