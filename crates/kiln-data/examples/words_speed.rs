//! `split_words` throughput on the datatrove agreement fixture (4.9 MB of
//! technical and web text), one thread:
//! `cargo run --release -p kiln-data --example words_speed`.
//! The first pass starts from whatever the process has seen (nothing); the
//! best of the later passes is the warm figure.

use std::time::Instant;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/datatrove_agreement.jsonl.zst"
);

fn main() {
    let raw = std::fs::read(FIXTURE).expect("read the fixture");
    let text = String::from_utf8(zstd::decode_all(&raw[..]).expect("zstd")).expect("UTF-8");
    let docs: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["text"].as_str().expect("text").to_string()
        })
        .collect();
    let mb = docs.iter().map(|d| d.len()).sum::<usize>() as f64 / 1e6;
    let pass = || {
        let t = Instant::now();
        let n: usize = docs
            .iter()
            .map(|d| kiln_data::words::split_words(d).len())
            .sum();
        (n, t.elapsed().as_secs_f64())
    };
    let (words, first) = pass();
    let warm = (0..4).map(|_| pass().1).fold(f64::INFINITY, f64::min);
    println!(
        "split_words: {} docs, {mb:.2} MB, {words} words; first pass {:.2} MB/s, warm (best of 4) {:.2} MB/s",
        docs.len(),
        mb / first,
        mb / warm
    );
}
