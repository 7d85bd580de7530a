//! The planner against a published table: Narayanan et al. 2021
//! ("Efficient Large-Scale Language Model Training on GPU Clusters Using
//! Megatron-LM", arXiv:2104.04473), Table 1: GPT models of 1.7B to 1T
//! parameters trained on up to 3072 A100s (Selene) with the tensor and
//! pipeline sizes they chose, and the FLOP/s per GPU they measured
//! (recomputation FLOPs included, their Eq. 3). All runs: vocabulary 51,200,
//! sequence 2048, full activation recomputation, no ZeRO.

use kiln_parallel::plan::{self, Constraints, Gpu, Layout, ModelShape, Recompute, Request};

/// One row of Table 1.
struct Row {
    billions: f64,
    heads: usize,
    hidden: usize,
    layers: usize,
    tp: usize,
    pp: usize,
    gpus: usize,
    batch: usize,
    /// Achieved teraFLOP/s per GPU.
    tflops: f64,
}

// The table's columns, in its order.
#[allow(clippy::too_many_arguments)]
const fn row(
    billions: f64,
    heads: usize,
    hidden: usize,
    layers: usize,
    tp: usize,
    pp: usize,
    gpus: usize,
    batch: usize,
    tflops: f64,
) -> Row {
    Row {
        billions,
        heads,
        hidden,
        layers,
        tp,
        pp,
        gpus,
        batch,
        tflops,
    }
}

const TABLE_1: [Row; 10] = [
    row(1.7, 24, 2304, 24, 1, 1, 32, 512, 137.0),
    row(3.6, 32, 3072, 30, 2, 1, 64, 512, 138.0),
    row(7.5, 32, 4096, 36, 4, 1, 128, 512, 142.0),
    row(18.4, 48, 6144, 40, 8, 1, 256, 1024, 135.0),
    row(39.1, 64, 8192, 48, 8, 2, 512, 1536, 138.0),
    row(76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140.0),
    row(145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148.0),
    row(310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155.0),
    row(529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163.0),
    row(1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163.0),
];

fn request(r: &Row, efficiency: f64) -> Request {
    let name = format!("gpt-{}b", r.billions);
    Request {
        model: ModelShape::gpt(&name, r.layers, r.hidden, r.heads, 51200, 2048),
        gpu: Gpu::named("a100").unwrap(),
        gpus_per_node: 8,
        nodes: r.gpus / 8,
        seq_len: 2048,
        global_batch: r.batch,
        efficiency,
        flash_attention: false,
        only: Constraints::default(),
    }
}

/// The published layout, at the micro-batch the planner finds fastest.
fn published(r: &Row, efficiency: f64) -> (Request, plan::Evaluated) {
    let req = request(r, efficiency);
    let (tp, pp, gpus) = (r.tp, r.pp, r.gpus);
    let best = [1, 2, 4, 8]
        .into_iter()
        .flat_map(|mb| [1, 2, 3, 4].map(|v| (mb, v)))
        .filter_map(|(micro_batch, chunks)| {
            let layout = Layout {
                dp: gpus / (tp * pp),
                tp,
                pp,
                micro_batch,
                zero: 0,
                recompute: Recompute::Full,
                chunks,
            };
            plan::evaluate(&req, &layout)
                .ok()
                .filter(|e| e.unfit.is_none())
        })
        .min_by(|a, b| a.step_s().total_cmp(&b.step_s()))
        .expect("the published layout fits");
    (req, best)
}

#[test]
fn parameter_counts_match_the_table() {
    for r in &TABLE_1 {
        let params = request(r, 0.5).model.params() as f64 / 1e9;
        let error = (params - r.billions).abs() / r.billions;
        assert!(error < 0.03, "{} vs {params}", r.billions);
    }
}

/// The efficiency at which the planner reproduces row 1 (no model parallelism).
fn calibrated_efficiency() -> f64 {
    let (mut lo, mut hi) = (0.05, 1.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        let (req, e) = published(&TABLE_1[0], mid);
        if e.achieved_flops_per_gpu(&req) / 1e12 < TABLE_1[0].tflops {
            lo = mid
        } else {
            hi = mid
        }
    }
    0.5 * (lo + hi)
}

#[test]
fn the_default_efficiency_is_row_1s_calibration() {
    let calibrated = calibrated_efficiency();
    assert!(
        (calibrated - plan::DEFAULT_EFFICIENCY).abs() < 0.005,
        "row 1 calibrates to {calibrated:.4}; DEFAULT_EFFICIENCY is {}",
        plan::DEFAULT_EFFICIENCY
    );
}

/// Rows 2-10 are the check: tensor and pipeline parallelism at scale, their
/// costs predicted, not fitted. docs/perf.md shows the same table.
#[test]
fn every_row_is_predicted_within_15_percent() {
    let mut worst: f64 = 0.0;
    for r in &TABLE_1 {
        let (req, e) = published(r, plan::DEFAULT_EFFICIENCY);
        let predicted = e.achieved_flops_per_gpu(&req) / 1e12;
        let error = predicted / r.tflops - 1.0;
        let (l, gib) = (&e.layout, plan::gib(e.memory.total()));
        println!(
            "{:>7.1}B tp {} pp {} (v {}, micro-batch {}): predicted {predicted:.0} TFLOP/s \
             per GPU, published {:.0} ({:+.1}%), {gib:.1} GiB, bubble {:.1}%",
            r.billions,
            r.tp,
            r.pp,
            l.chunks,
            l.micro_batch,
            r.tflops,
            100.0 * error,
            100.0 * e.bubble_fraction(&req)
        );
        assert!(
            error.abs() < 0.15,
            "{}B: predicted {predicted:.0}, published {}",
            r.billions,
            r.tflops
        );
        worst = worst.max(error.abs());
    }
    println!("worst error {:.1}%", 100.0 * worst);
}

/// They ran, so the published layouts fit in 80 GB with recomputation; the
/// larger ones could not have run without it.
#[test]
fn the_large_rows_need_recomputation_to_fit() {
    for r in &TABLE_1 {
        let req = request(r, plan::DEFAULT_EFFICIENCY);
        let (billions, tp, pp, gpus) = (r.billions, r.tp, r.pp, r.gpus);
        let layout = |recompute| Layout {
            dp: gpus / (tp * pp),
            tp,
            pp,
            micro_batch: 1,
            zero: 0,
            recompute,
            chunks: 1,
        };
        let with = plan::evaluate(&req, &layout(Recompute::Full)).unwrap();
        assert!(with.unfit.is_none(), "{billions}B: {:?}", with.unfit);
        let without = plan::evaluate(&req, &layout(Recompute::None)).unwrap();
        if billions > 100.0 {
            let why = without.unfit.expect("does not fit without recomputation");
            assert!(why.contains("activations"), "{why}");
        }
    }
}

/// Their placement rule: tensor parallelism up to the node at the largest
/// sizes, since nothing else fits the weights of a 1T model.
#[test]
fn the_planner_puts_a_trillion_parameters_on_full_nodes_of_tensor_parallelism() {
    let req = request(&TABLE_1[9], plan::DEFAULT_EFFICIENCY);
    let best = &plan::search(&req).unwrap()[0];
    assert!(best.unfit.is_none());
    assert_eq!(best.layout.tp, 8, "{:?}", best.layout);
    assert!(best.layout.pp >= 8, "{:?}", best.layout);
}
