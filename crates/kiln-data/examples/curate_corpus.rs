//! Curates the embedded corpus with FineWeb's settings and prints the summary:
//! `cargo run --release -p kiln-data --example curate_corpus -- OUT_DIR`
//! (the same as `kiln data curate --fineweb --input data/corpus/raw.jsonl.zst
//! --eval data/eval/passages.jsonl --output OUT_DIR`, without the CLI).

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
    let opts = CurateOptions {
        inputs: vec![root.join("data/corpus/raw.jsonl.zst")],
        output: out.clone(),
        config,
        strict: false,
        shard: None,
    };
    let report = curate(&opts, &Progress::default()).expect("curate");
    print!("{}", report.stats.expect("all shards done").table());
    println!("output in {}", out.display());
}
