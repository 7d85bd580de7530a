//! PP on ThreadComm threads (one CPU backend each) against one process
//! running the whole batch.

use std::time::Duration;

use kiln_model::{split_layers, Gpt, GptConfig, Stage};

use super::*;
use crate::comm::ThreadComm;

const SEED: u64 = 11;

struct Run {
    loss: f32,
    /// Per stage: its owned parameters' gradients.
    grads: Vec<Vec<(usize, Vec<f32>)>>,
    slots: Vec<usize>,
    timelines: Vec<StageTimeline>,
}

fn data(rows: usize, v: u32) -> (Vec<u32>, Vec<u32>) {
    let tok = (0..rows as u32).map(|i| (i * 13 + 5) % v).collect();
    let tgt = (0..rows as u32).map(|i| (i * 7 + i / 3 + 1) % v).collect();
    (tok, tgt)
}

fn pipeline(cfg: &GptConfig, p: usize, m: usize, b: usize, t: usize, sch: Schedule) -> Run {
    let (tok, tgt) = data(m * b * t, cfg.vocab_size as u32);
    let ranges = split_layers(cfg.n_layer, p);
    let comms = ThreadComm::group(p, Duration::from_secs(60));
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .zip(ranges)
            .map(|(mut comm, range)| {
                let (cfg, tok, tgt) = (cfg.clone(), &tok, &tgt);
                scope.spawn(move || {
                    let mut be = kiln_tensor::cpu_backend(Some(1));
                    let gpt = Gpt::new(&mut be, cfg, SEED).unwrap();
                    let mut stage = Stage::new(gpt, range).unwrap();
                    let n = b * t;
                    let micro: Vec<MicroBatch> = (0..m)
                        .map(|k| MicroBatch {
                            tokens: &tok[k * n..(k + 1) * n],
                            targets: &tgt[k * n..(k + 1) * n],
                        })
                        .collect();
                    let report =
                        run_stage(&mut comm, &mut be, &mut stage, sch, &micro, b, t).unwrap();
                    let grads: Vec<(usize, Vec<f32>)> = stage
                        .owned_params()
                        .into_iter()
                        .map(|i| (i, stage.read_grad(&mut be, i).unwrap()))
                        .collect();
                    stage.release(&mut be).unwrap();
                    (report, grads)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let loss = results[0].0.loss;
    for (r, _) in &results {
        assert_eq!(r.loss, loss, "every stage holds the broadcast loss");
    }
    Run {
        loss,
        slots: results.iter().map(|(r, _)| r.slots).collect(),
        timelines: results.iter().map(|(r, _)| r.timeline.clone()).collect(),
        grads: results.into_iter().map(|(_, g)| g).collect(),
    }
}

/// One process, the whole batch (B = m * b).
fn single(cfg: &GptConfig, m: usize, b: usize, t: usize) -> (f32, Vec<Vec<f32>>) {
    let (tok, tgt) = data(m * b * t, cfg.vocab_size as u32);
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let mut gpt = Gpt::new(&mut be, cfg.clone(), SEED).unwrap();
    let loss = gpt
        .forward(&mut be, &tok, Some(&tgt), m * b, t)
        .unwrap()
        .unwrap();
    gpt.backward(&mut be, 1.0).unwrap();
    let grads = gpt.read_grads(&mut be).unwrap();
    gpt.release(&mut be).unwrap();
    (loss, grads)
}

/// Max relative errors (loss; gradients relative to each tensor's max
/// magnitude), after checking every parameter is owned by some stage.
fn compare(run: &Run, want_loss: f32, want: &[Vec<f32>]) -> (f64, f64) {
    let loss_err = ((run.loss - want_loss).abs() / want_loss.abs()) as f64;
    let mut seen = vec![false; want.len()];
    let mut grad_err = 0f64;
    for stage in &run.grads {
        for (i, g) in stage {
            seen[*i] = true;
            assert_eq!(g.len(), want[*i].len());
            let scale = want[*i].iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-12);
            for (a, w) in g.iter().zip(&want[*i]) {
                grad_err = grad_err.max(((a - w).abs() / scale) as f64);
            }
        }
    }
    assert!(seen.iter().all(|&s| s), "a parameter no stage owns");
    (loss_err, grad_err)
}

fn check(cfg: GptConfig, p: usize, sch: Schedule) {
    let (m, b, t) = (4, 2, 8);
    let (want_loss, want) = single(&cfg, m, b, t);
    let run = pipeline(&cfg, p, m, b, t, sch);
    let (le, ge) = compare(&run, want_loss, &want);
    let bubble = measured_bubble(&run.timelines);
    eprintln!(
        "PP={p} {sch:?} layers={} m={m}: loss rel err {le:.2e}, grad max rel err {ge:.2e}, \
         bubble measured {bubble:.3} (per stage {:?}) vs theory {:.3}, slots {:?}",
        cfg.n_layer,
        measured_bubbles(&run.timelines),
        theoretical_bubble(p, m),
        run.slots
    );
    assert!(
        le <= 1e-5,
        "loss {} vs {want_loss}: rel err {le:e}",
        run.loss
    );
    assert!(ge <= 1e-5, "gradient rel err {ge:e}");
    assert!((0.0..=1.0).contains(&bubble));
    for (s, &slots) in run.slots.iter().enumerate() {
        let bound = match sch {
            Schedule::GPipe => m,
            Schedule::OneFOneB => (p - s).min(m),
        };
        assert_eq!(slots, bound, "stage {s} activation slots");
    }
}

fn gpt2(layers: usize) -> GptConfig {
    GptConfig::new(61, 16, layers, 2, 16)
}

#[test]
fn pp2_two_layers_matches_one_process() {
    for sch in [Schedule::GPipe, Schedule::OneFOneB] {
        check(gpt2(2), 2, sch);
    }
}

#[test]
fn pp2_four_layers_matches_one_process() {
    for sch in [Schedule::GPipe, Schedule::OneFOneB] {
        check(gpt2(4), 2, sch);
    }
}

#[test]
fn pp4_four_layers_matches_one_process() {
    for sch in [Schedule::GPipe, Schedule::OneFOneB] {
        check(gpt2(4), 4, sch);
    }
}

#[test]
fn pp1_is_the_whole_model() {
    check(gpt2(2), 1, Schedule::OneFOneB);
}

/// The tied wte: each stage's own part is far from the full gradient
/// (so a missing sum would fail the comparisons above); after the step the
/// first and last stages hold the same, full, gradient.
#[test]
fn the_tied_wte_gradient_is_summed_between_first_and_last() {
    let cfg = gpt2(2);
    let (m, b, t) = (4, 2, 8);
    let (_, want) = single(&cfg, m, b, t);
    let run = pipeline(&cfg, 2, m, b, t, Schedule::OneFOneB);
    let wte =
        |stage: &Vec<(usize, Vec<f32>)>| stage.iter().find(|(i, _)| *i == 0).unwrap().1.clone();
    let (first, last) = (wte(&run.grads[0]), wte(&run.grads[1]));
    assert_eq!(first, last, "both ends hold the same sum");
    let scale = want[0].iter().fold(0f32, |a, x| a.max(x.abs()));
    let err = |g: &[f32]| {
        g.iter()
            .zip(&want[0])
            .fold(0f32, |a, (x, w)| a.max((x - w).abs()))
            / scale
    };
    assert!(err(&first) <= 1e-5);

    // The first stage's part alone (its embedding backward), in one process.
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let ranges = split_layers(2, 2);
    let mut s0 = Stage::new(
        Gpt::new(&mut be, cfg.clone(), SEED).unwrap(),
        ranges[0].clone(),
    )
    .unwrap();
    let mut s1 = Stage::new(
        Gpt::new(&mut be, cfg.clone(), SEED).unwrap(),
        ranges[1].clone(),
    )
    .unwrap();
    let (tok, tgt) = data(m * b * t, cfg.vocab_size as u32);
    let n = b * t;
    for k in 0..m {
        use kiln_model::{StageGrad, StageInput, StageOutput};
        let StageOutput::Hidden(h) = s0
            .forward(
                &mut be,
                0,
                StageInput::Tokens(&tok[k * n..(k + 1) * n]),
                None,
                b,
                t,
            )
            .unwrap()
        else {
            panic!("the first stage gives a hidden")
        };
        s1.forward(
            &mut be,
            0,
            StageInput::Hidden(&h),
            Some(&tgt[k * n..(k + 1) * n]),
            b,
            t,
        )
        .unwrap();
        let scale = 1.0 / m as f32;
        let dh = s1
            .backward(&mut be, 0, StageGrad::Loss { scale })
            .unwrap()
            .unwrap();
        assert!(s0
            .backward(&mut be, 0, StageGrad::Hidden(&dh))
            .unwrap()
            .is_none());
    }
    let (part0, part1) = (
        s0.read_grad(&mut be, 0).unwrap(),
        s1.read_grad(&mut be, 0).unwrap(),
    );
    assert!(
        err(&part0) > 1e-2,
        "the embedding part alone is not the gradient"
    );
    assert!(
        err(&part1) > 1e-2,
        "the lm_head part alone is not the gradient"
    );
    let sum: Vec<f32> = part0.iter().zip(&part1).map(|(a, b)| a + b).collect();
    assert!(err(&sum) <= 1e-5);
    s0.release(&mut be).unwrap();
    s1.release(&mut be).unwrap();
}

/// Llama blocks (RMSNorm, RoPE, SwiGLU, grouped-query attention; tied
/// embeddings) split the same way.
#[test]
fn pp2_llama_matches_one_process() {
    let cfg = GptConfig::new_llama(
        kiln_model::LlamaFamily::Llama,
        61,
        16,
        4,
        4,
        2,
        16,
        24,
        true,
    );
    for sch in [Schedule::GPipe, Schedule::OneFOneB] {
        check(cfg.clone(), 2, sch);
    }
}
