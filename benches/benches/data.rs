//! Data curation throughput on the embedded corpus (every 5th document,
//! normalised): each filter, MinHash signatures and exact hashing, single
//! threaded (MB/s per core), plus the whole per-document pipeline.
//!
//! Peer: datatrove on the same documents (benches/peers/datatrove_filters.py),
//! run when `python3` (or $KILN_DATATROVE_PYTHON) can import datatrove. The
//! bench prints MB/s for both, the ratio, and the keep/drop agreement of
//! each filter with datatrove's decisions.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_data::dedup::exact::text_hash;
use kiln_data::dedup::lines::{LineDedupConfig, LineDedupOutcome, LineDeduper};
use kiln_data::dedup::minhash::{MinHashConfig, MinHasher};
use kiln_data::filters::{c4::C4Outcome, c4::C4, fineweb::FineWeb, gopher_quality::GopherQuality};
use kiln_data::filters::{
    gopher_repetition::GopherRepetition,
    language::{Backend, Language},
};
use kiln_data::normalize::normalize;
use kiln_data::process::Processor;
use kiln_data::words::split_words;
use kiln_data::{CurateConfig, Document};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

fn corpus() -> Vec<Document> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/corpus/raw.jsonl.zst");
    let mut docs = Vec::new();
    let mut k = 0usize;
    kiln_data::read::for_each_record::<std::io::Error>(&path, |r| {
        k += 1;
        if let (Ok(mut d), 0) = (r, k % 5) {
            d.text = normalize(&d.text);
            if !d.text.is_empty() {
                docs.push(d);
            }
        }
        Ok(())
    })
    .expect("read data/corpus/raw.jsonl.zst");
    docs
}

type Decide = Box<dyn Fn(&str) -> bool>;

/// (name, keep/drop decision on one normalised document).
fn filters() -> Vec<(&'static str, Decide)> {
    let gr = GopherRepetition::default();
    let gq = GopherQuality::default();
    let c4 = C4 {
        filter_no_terminal_punct: false,
        ..Default::default()
    };
    let fw = FineWeb::default();
    vec![
        (
            "gopher_repetition",
            Box::new(move |t: &str| gr.check(t, &split_words(t)).is_none()),
        ),
        (
            "gopher_quality",
            Box::new(move |t: &str| gq.check(t, &split_words(t)).is_none()),
        ),
        (
            "c4",
            Box::new(move |t: &str| matches!(c4.apply(t), C4Outcome::Keep { .. })),
        ),
        (
            "fineweb",
            Box::new(move |t: &str| fw.check(t, split_words(t).len()).is_none()),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let docs = corpus();
    let bytes: u64 = docs.iter().map(|d| d.text.len() as u64).sum();
    let mut g = c.benchmark_group("data");
    g.sample_size(10).throughput(Throughput::Bytes(bytes));
    g.bench_function("words", |b| {
        b.iter(|| {
            docs.iter()
                .map(|d| split_words(&d.text).len())
                .sum::<usize>()
        })
    });
    for (name, f) in filters() {
        g.bench_function(name, |b| {
            b.iter(|| docs.iter().filter(|d| f(&d.text)).count())
        });
    }
    // The default (lid.176 on prose words) and the former default.
    let whatlang = Language {
        backend: Backend::Whatlang,
        languages: vec!["eng".into()],
        threshold: 0.5,
        max_chars: 1000,
        prose_only: false,
        ..Default::default()
    };
    for (name, lang) in [
        ("language", Language::default()),
        ("language_whatlang", whatlang),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                docs.iter()
                    .filter(|d| lang.check(&d.text).1.is_none())
                    .count()
            })
        });
    }
    let mh = MinHasher::new(MinHashConfig::default());
    g.bench_function("minhash_signature", |b| {
        b.iter(|| docs.iter().filter_map(|d| mh.doc_keys(&d.text)).count())
    });
    g.bench_function("exact_hash", |b| {
        b.iter(|| {
            docs.iter()
                .map(|d| text_hash(&d.text))
                .fold(0u128, |a, h| a ^ h)
        })
    });
    let p = Processor::new(CurateConfig::fineweb()).unwrap();
    g.bench_function("pipeline_per_doc", |b| {
        b.iter(|| {
            docs.iter()
                .filter(|d| p.process((*d).clone()).kept.is_some())
                .count()
        })
    });
    g.finish();
    compare_with_datatrove(&docs, bytes);
}

/// Best of three single-threaded passes, in seconds.
fn time(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn compare_with_datatrove(docs: &[Document], bytes: u64) {
    let python = std::env::var("KILN_DATATROVE_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import datatrove, spacy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("peer: datatrove not importable by {python} (pip install 'datatrove[processing]' spacy); no ratio");
        return;
    }
    let dir = std::env::temp_dir().join(format!("kiln-bench-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("docs.jsonl");
    let body: String = docs
        .iter()
        .map(|d| serde_json::json!({"text": d.text}).to_string() + "\n")
        .collect();
    std::fs::write(&input, body).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/datatrove_filters.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(&input)
        .output()
        .expect("run peer");
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        println!("peer failed: {}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    let peer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("peer JSON");
    let mb = bytes as f64 / 1e6;
    println!(
        "\ndata filters vs datatrove, {} docs / {mb:.2} MB, one core each (MB/s):",
        docs.len()
    );
    println!(
        "{:<20} {:>10} {:>12} {:>9} {:>10}",
        "filter", "kiln", "datatrove", "ratio", "agreement"
    );
    let (mut kiln_total, mut peer_total) = (0.0, 0.0);
    for (name, f) in filters() {
        let kiln_s = time(|| {
            black_box(docs.iter().filter(|d| f(&d.text)).count());
        });
        let p = &peer["filters"][name];
        let peer_s = p["seconds"].as_f64().unwrap();
        let keep: Vec<bool> = p["keep"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        let agree = docs
            .iter()
            .zip(&keep)
            .filter(|(d, &k)| f(&d.text) == k)
            .count();
        kiln_total += kiln_s;
        peer_total += peer_s;
        println!(
            "{name:<20} {:>10.1} {:>12.3} {:>8.0}x {:>9.2}%",
            mb / kiln_s,
            mb / peer_s,
            peer_s / kiln_s,
            100.0 * agree as f64 / docs.len() as f64
        );
    }
    let mh = MinHasher::new(MinHashConfig::default());
    let kiln_s = time(|| {
        black_box(docs.iter().filter_map(|d| mh.signature(&d.text)).count());
    });
    let peer_s = peer["filters"]["minhash_signature"]["seconds"]
        .as_f64()
        .unwrap();
    kiln_total += kiln_s;
    peer_total += peer_s;
    println!(
        "{:<20} {:>10.1} {:>12.3} {:>8.0}x",
        "minhash_signature",
        mb / kiln_s,
        mb / peer_s,
        peer_s / kiln_s
    );
    println!(
        "{:<20} {:>10.1} {:>12.3} {:>8.0}x   (4 filters + MinHash, sequential)",
        "total",
        mb / kiln_total,
        mb / peer_total,
        peer_total / kiln_total
    );
}

/// Bloom-filter line dedup (stage 2, one thread): normalise, hash, probe
/// and rebuild every document, a fresh filter per pass (sized for 1M lines
/// at 1e-3, 1.8 MB). Peer figure: dolma `dedupe` paragraphs, ~31 MB/s/core
/// including gzip and JSON (docs/perf.md).
fn bench_line_dedup(c: &mut Criterion) {
    let docs = corpus();
    let bytes: u64 = docs.iter().map(|d| d.text.len() as u64).sum();
    let cfg = LineDedupConfig {
        enabled: true,
        expected_items: 1_000_000,
        ..Default::default()
    };
    let pass = || {
        let mut ld = LineDeduper::new(cfg.clone());
        let mut removed = 0usize;
        for d in &docs {
            match ld.apply(&d.text) {
                LineDedupOutcome::Unchanged => {}
                LineDedupOutcome::Rewritten { removed: r, .. }
                | LineDedupOutcome::Drop { removed: r, .. } => removed += r.len(),
            }
        }
        removed
    };
    println!(
        "line_dedup: {} docs, {:.2} MB, {} lines removed",
        docs.len(),
        bytes as f64 / 1e6,
        pass()
    );
    let mut g = c.benchmark_group("data_line_dedup");
    g.sample_size(10).throughput(Throughput::Bytes(bytes));
    g.bench_function("line_dedup", |b| b.iter(|| black_box(pass())));
    g.finish();
}

criterion_group!(benches, bench, bench_line_dedup);
criterion_main!(benches);
