//! Curates the embedded corpus with FineWeb's settings and prints the summary:
//! `cargo run --release -p kiln-data --example curate_corpus -- OUT_DIR`
//! (the same as `kiln data curate --fineweb --input data/corpus/raw.jsonl.zst
//! --eval data/eval/passages.jsonl --output OUT_DIR`, without the CLI).
//! `KILN_INPUT=FILE` curates another input, `KILN_LINE_DEDUP=1` turns on the
//! Bloom line dedup, `KILN_SPLIT_BYTES=N` sets `[input] split_bytes`.

use kiln_data::curate::{curate, CurateOptions, Progress};
use kiln_data::CurateConfig;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("kiln-curate"));
    let mut config = CurateConfig::fineweb();
    config.decontamination.eval = vec![root.join("data/eval/passages.jsonl")];
    let config_line_dedup = std::env::var_os("KILN_LINE_DEDUP").is_some();
    config.line_dedup.enabled = config_line_dedup;
    if let Some(n) = std::env::var("KILN_SPLIT_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        config.input.split_bytes = n;
    }
    let input = std::env::var_os("KILN_INPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("data/corpus/raw.jsonl.zst"));
    let opts = CurateOptions {
        inputs: vec![input],
        output: out.clone(),
        config,
        strict: false,
        shard: None,
    };
    let report = curate(&opts, &Progress::default()).expect("curate");
    println!(
        "{} shards run, {} skipped",
        report.shards_run.len(),
        report.shards_skipped.len()
    );
    print!("{}", report.stats.expect("all shards done").table());
    println!("output in {}", out.display());
    if config_line_dedup {
        line_dedup_speed(&opts.inputs[0]);
    }
}

/// CPU nanoseconds of the calling thread (Linux; the machine is shared, so
/// wall time says little).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Line dedup alone over every normalised input document, one thread.
fn line_dedup_speed(input: &std::path::Path) {
    use kiln_data::dedup::lines::{LineDedupConfig, LineDeduper};
    let mut texts = Vec::new();
    kiln_data::read::for_each_record::<std::io::Error>(input, |r| {
        if let Ok(d) = r {
            texts.push(kiln_data::normalize::normalize(&d.text));
        }
        Ok(())
    })
    .expect("read input");
    let bytes: usize = texts.iter().map(String::len).sum();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let mut ld = LineDeduper::new(LineDedupConfig {
            enabled: true,
            ..Default::default()
        });
        let t = thread_cpu_ns();
        let n = texts
            .iter()
            .filter(|t| ld.apply(t) != kiln_data::dedup::lines::LineDedupOutcome::Unchanged)
            .count();
        best = best.min((thread_cpu_ns() - t) as f64 * 1e-9);
        std::hint::black_box(n);
    }
    println!(
        "line_dedup alone: {} docs, {:.2} MB in {best:.3} CPU-s = {:.1} MB per CPU-second",
        texts.len(),
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / best
    );
}
