//! Generation throughput (new tokens per second) on CPU with the KV cache:
//! the `small` config (6 layers, d=384, 6 heads, vocab 8192, T=256) from a
//! fixed random init, 8 prompts of 12..=33 tokens, 32 new tokens each,
//! sampled (temperature 1, top-k 50) so every sequence runs to the end.
//!
//! - `batch8`: `Gpt::generate_batch` over the 8 prompts (an RL rollout);
//! - `single`: `Gpt::generate` of the first prompt (a chat reply).
//!
//! Throughput is reported in new tokens ("elem/s"). Environment:
//! KILN_THREADS (default: all cores).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_model::{Gpt, GptConfig, Rng, SampleOptions};

const PROMPTS: usize = 8;
const NEW_TOKENS: usize = 32;

fn threads() -> usize {
    std::env::var("KILN_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(7);
    (0..PROMPTS)
        .map(|i| {
            let len = 12 + 3 * i;
            (0..len)
                .map(|_| (rng.next_u64() % vocab as u64) as u32)
                .collect()
        })
        .collect()
}

fn generation(c: &mut Criterion) {
    let mut be = kiln_tensor::cpu_backend(Some(threads()));
    let cfg = GptConfig::preset("small", 8192).unwrap();
    let mut model = Gpt::new(&mut be, cfg.clone(), 0).unwrap();
    let prompts = prompts(cfg.vocab_size);
    let opts = SampleOptions {
        max_new_tokens: NEW_TOKENS,
        temperature: 1.0,
        top_k: Some(50),
        top_p: None,
        seed: 1,
        stop_token: None,
    };

    let mut g = c.benchmark_group("generate small");
    g.sample_size(10);
    g.throughput(Throughput::Elements((PROMPTS * NEW_TOKENS) as u64));
    g.bench_function("batch8 x 32 new tokens", |b| {
        b.iter(|| {
            let out = model.generate_batch(&mut be, &prompts, &opts).unwrap();
            assert!(out.iter().all(|o| o.len() == NEW_TOKENS));
        })
    });
    g.throughput(Throughput::Elements(NEW_TOKENS as u64));
    g.bench_function("single x 32 new tokens", |b| {
        b.iter(|| {
            let out = model.generate(&mut be, &prompts[0], &opts).unwrap();
            assert_eq!(out.len(), NEW_TOKENS);
        })
    });
    g.finish();
}

criterion_group!(benches, generation);
criterion_main!(benches);
