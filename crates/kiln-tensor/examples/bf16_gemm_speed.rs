//! Quick timing of the native bf16 GEMM against the f32 GEMM (development aid):
//! `cargo run --release -p kiln-tensor --example bf16_gemm_speed [threads]`.

use std::time::Instant;

use half::bf16;
use kiln_tensor::gemm::{sgemm, GemmEngine, Mat, MatMut};
use kiln_tensor::gemm_bf16::{available, gemm_bf16_with, Bf16Kernel, Bf16Mat};

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    if !available() {
        eprintln!("no avx512bf16");
        return;
    }
    // (m, n, k, trans_a, trans_b)
    let shapes = [
        (1024, 1152, 384, false, true),
        (1024, 1536, 384, false, true),
        (1024, 384, 1536, false, true),
        (1024, 8192, 384, false, true),
        (1024, 384, 8192, false, false),
        (8192, 384, 1024, true, false),
        (1024, 384, 1536, false, false),
        (1536, 384, 1024, true, false),
    ];
    println!("threads {threads}");
    for (m, n, k, ta, tb) in shapes {
        let fa: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let fb: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let ha: Vec<bf16> = fa.iter().map(|&x| bf16::from_f32(x)).collect();
        let hb: Vec<bf16> = fb.iter().map(|&x| bf16::from_f32(x)).collect();
        let mut c = vec![0f32; m * n];
        let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
        let flops = 2.0 * (m * n * k) as f64;
        let reps = 5;
        let t32 = pool.install(|| {
            best(reps, || unsafe {
                sgemm(
                    GemmEngine::Gemm,
                    m,
                    n,
                    k,
                    1.0,
                    Mat::row_major(&fa, lda, ta),
                    Mat::row_major(&fb, ldb, tb),
                    0.0,
                    MatMut::row_major(&mut c, n),
                )
            })
        });
        let mut t16 = [f64::NAN; 2];
        for (t, kernel) in t16.iter_mut().zip([Bf16Kernel::Avx512, Bf16Kernel::Amx]) {
            if !kernel.available() {
                continue;
            }
            *t = pool.install(|| {
                best(reps, || {
                    gemm_bf16_with(
                        kernel,
                        m,
                        n,
                        k,
                        1.0,
                        Bf16Mat {
                            data: &ha,
                            ld: lda,
                            trans: ta,
                        },
                        Bf16Mat {
                            data: &hb,
                            ld: ldb,
                            trans: tb,
                        },
                        0.0,
                        &mut c,
                        n,
                    )
                })
            });
        }
        println!(
            "m={m:5} n={n:5} k={k:5} ta={ta:5} tb={tb:5}  f32 {:6.1}  avx512-bf16 {:6.1}  amx {:6.1} GFLOP/s  amx/f32 x{:.2}",
            flops / t32 / 1e9,
            flops / t16[0] / 1e9,
            flops / t16[1] / 1e9,
            t32 / t16[1]
        );
    }
}
