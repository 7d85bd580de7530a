//! Language-ID candidates on a labelled set built by scripts/langid_eval.py
//! (not committed: most translated manual pages are GPL). Ignored unless
//! KILN_LANGID_SET names the file:
//!
//!     KILN_LANGID_SET=/tmp/langid.jsonl cargo test -p kiln-data --test langid_eval -- --ignored --nocapture
//!
//! Prints, per detector, how often the keep/drop decision is right (English
//! kept, other languages dropped) on technical and web text, and its speed.

use kiln_data::filters::language::{Backend, Language};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Instant;

struct Doc {
    lang: String,
    kind: String,
    text: String,
    peers: BTreeMap<&'static str, f64>,
}

#[test]
#[ignore = "needs KILN_LANGID_SET (scripts/langid_eval.py)"]
fn language_id_candidates() {
    let Ok(path) = std::env::var("KILN_LANGID_SET") else {
        println!("KILN_LANGID_SET unset: nothing to measure");
        return;
    };
    let docs: Vec<Doc> = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let peers = ["fasttext", "lingua"]
                .into_iter()
                .map(|p| (p, v[p]["en"].as_f64().unwrap_or(0.0)))
                .collect();
            Doc {
                lang: v["lang"].as_str().unwrap().into(),
                kind: v["kind"].as_str().unwrap().into(),
                text: v["text"].as_str().unwrap().into(),
                peers,
            }
        })
        .collect();
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    let candidates: Vec<(&str, Language)> = vec![
        (
            "whatlang (old default: eng, 0.5, 1000 chars)",
            Language {
                backend: Backend::Whatlang,
                languages: vec!["eng".into()],
                threshold: 0.5,
                max_chars: 1000,
                prose_only: false,
                ..Default::default()
            },
        ),
        (
            "whatlang, prose words",
            Language {
                backend: Backend::Whatlang,
                languages: vec!["eng".into()],
                threshold: 0.5,
                max_chars: 1000,
                prose_only: true,
                ..Default::default()
            },
        ),
        (
            "lid176 raw text (FineWeb: en, 0.65)",
            Language {
                prose_only: false,
                ..Default::default()
            },
        ),
        ("lid176 prose words (new default)", Language::default()),
    ];
    let header = "detector                                        en/tech  en/web  other/tech  other/web   MB/s";
    println!(
        "{} docs, {:.2} MB\n{header}",
        docs.len(),
        bytes as f64 / 1e6
    );
    let row = |name: &str, decide: &dyn Fn(&Doc) -> bool, secs: Option<f64>| {
        let mut acc: BTreeMap<(bool, &str), (usize, usize)> = BTreeMap::new();
        for d in &docs {
            let en = d.lang == "en";
            let a = acc.entry((en, d.kind.as_str())).or_default();
            a.0 += (decide(d) == en) as usize;
            a.1 += 1;
        }
        let pct = |en: bool, k: &str| {
            acc.get(&(en, k)).map_or("-".to_string(), |(a, n)| {
                format!("{:.1}%", 100.0 * *a as f64 / *n as f64)
            })
        };
        println!(
            "{name:<47} {:>7} {:>7} {:>11} {:>10} {:>6}",
            pct(true, "technical"),
            pct(true, "web"),
            pct(false, "technical"),
            pct(false, "web"),
            secs.map_or("(py)".into(), |s| format!("{:.2}", bytes as f64 / 1e6 / s))
        );
    };
    for (name, f) in &candidates {
        let t0 = Instant::now();
        let keep: Vec<bool> = docs.iter().map(|d| f.check(&d.text).1.is_none()).collect();
        let secs = t0.elapsed().as_secs_f64();
        let by_ptr: BTreeMap<*const Doc, bool> = docs
            .iter()
            .zip(&keep)
            .map(|(d, &k)| (d as *const Doc, k))
            .collect();
        row(name, &|d| by_ptr[&(d as *const Doc)], Some(secs));
    }
    for peer in ["fasttext", "lingua"] {
        row(
            &format!("{peer} (Python, en >= 0.65, raw text)"),
            &|d| d.peers[peer] >= 0.65,
            None,
        );
    }
}
