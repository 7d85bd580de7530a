//! The perplexity filter through the binary: a tiny model trained for a few
//! steps on KJV chapters finds gibberish more surprising than KJV chapters
//! it never saw, and a threshold between the two removes the gibberish,
//! with the measured perplexity in rejected/.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::cli::{kiln, s};

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sentences of random lowercase "words": no language's statistics.
fn gibberish(seed: u64, chars: usize) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    let mut text = String::new();
    while text.len() < chars {
        for w in 0..8 + next(8) {
            if w > 0 {
                text.push(' ');
            }
            for _ in 0..2 + next(8) {
                text.push((b'a' + next(26) as u8) as char);
            }
        }
        text.push_str(". ");
    }
    text.trim_end().to_string()
}

fn write_jsonl(path: &Path, docs: &[(String, String)]) {
    let lines: Vec<String> = docs
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// `id -> perplexity` of the perplexity rejections `kiln data inspect` shows.
fn rejected_values(out: &Path) -> BTreeMap<String, f64> {
    let run = kiln(&[
        "data",
        "inspect",
        s(out),
        "--reason",
        "perplexity",
        "--sample",
        "100",
    ]);
    ok(&run, "inspect");
    let shown = String::from_utf8_lossy(&run.stdout);
    shown
        .lines()
        .filter_map(|l| l.strip_prefix("-- "))
        .map(|l| {
            let id = l.split_whitespace().next().unwrap().to_string();
            let value = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("value="))
                .unwrap_or_else(|| panic!("no value in {l:?}"))
                .parse()
                .unwrap();
            (id, value)
        })
        .collect()
}

#[test]
fn perplexity_filter_removes_gibberish_with_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kjv = include_str!("../fixtures/text/kjv_excerpt.txt");
    let chapters: Vec<&str> = kjv
        .split("\n\n")
        .map(str::trim)
        .filter(|c| c.len() > 2000)
        .collect();
    assert!(
        chapters.len() >= 20,
        "fixture has {} chapters",
        chapters.len()
    );
    let (unseen, seen) = chapters.split_at(3);

    // A tiny model trained for a few steps on KJV chapters.
    let train = d.join("train.jsonl");
    let docs: Vec<(String, String)> = seen
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("t{i}"), c.to_string()))
        .collect();
    write_jsonl(&train, &docs);
    let tok = d.join("tokenizer.json");
    let tokens = d.join("tokens");
    let run_dir = d.join("run");
    ok(
        &kiln(&[
            "tokenizer",
            "train",
            "--input",
            s(&train),
            "--vocab-size",
            "384",
            "--output",
            s(&tok),
        ]),
        "tokenizer train",
    );
    ok(
        &kiln(&[
            "data",
            "tokenize",
            "--tokenizer",
            s(&tok),
            "--input",
            s(&train),
            "--output",
            s(&tokens),
            "--val-fraction",
            "0",
        ]),
        "tokenize",
    );
    ok(
        &kiln(&[
            "pretrain",
            "--data",
            s(&tokens),
            "--out",
            s(&run_dir),
            "--model",
            "tiny",
            "--vocab-size",
            "384",
            "--steps",
            "30",
            "--batch-size",
            "8",
            "--seq-len",
            "64",
            "--lr",
            "3e-3",
            "--warmup",
            "3",
            "--seed",
            "3",
            "--threads",
            "2",
        ]),
        "pretrain",
    );

    // Curate three unseen chapters and two gibberish documents with only
    // the perplexity filter on (gibberish would not pass language ID).
    let input = d.join("docs.jsonl");
    let mut docs: Vec<(String, String)> = unseen
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("kjv{i}"), c.to_string()))
        .collect();
    docs.push(("gib0".into(), gibberish(1, 2500)));
    docs.push(("gib1".into(), gibberish(2, 2500)));
    write_jsonl(&input, &docs);
    let config = d.join("curate.toml");
    let off = [
        "language",
        "gopher_repetition",
        "gopher_quality",
        "c4",
        "fineweb",
        "exact_dedup",
        "minhash",
    ];
    let toml: String = off
        .iter()
        .map(|sec| format!("[{sec}]\nenabled = false\n"))
        .collect();
    std::fs::write(&config, toml).unwrap();
    let curate = |out: &Path, max: &str| {
        kiln(&[
            "data",
            "curate",
            "--input",
            s(&input),
            "--output",
            s(out),
            "--config",
            s(&config),
            "--perplexity-model",
            s(&run_dir),
            "--perplexity-tokenizer",
            s(&tok),
            "--max-perplexity",
            max,
        ])
    };

    // Threshold 1 (the lowest perplexity there is) removes everything,
    // each with its measured value.
    let all = d.join("all");
    ok(&curate(&all, "1"), "curate (threshold 1)");
    let values = rejected_values(&all);
    assert_eq!(values.len(), 5, "{values:?}");
    let worst_kjv = (0..3)
        .map(|i| values[&format!("kjv{i}")])
        .fold(0.0, f64::max);
    let best_gib = values["gib0"].min(values["gib1"]);
    assert!(
        best_gib > 1.2 * worst_kjv,
        "gibberish should score far worse than unseen KJV text: {values:?}"
    );
    // The model learned something: unseen KJV beats a uniform guess over 384 ids.
    assert!(worst_kjv < 384.0, "{values:?}");

    // A threshold between them keeps KJV and removes the gibberish.
    let cut = (worst_kjv * best_gib).sqrt();
    let out = d.join("cut");
    let run = curate(&out, &format!("{cut}"));
    ok(&run, "curate (threshold between)");
    let stats: Value =
        serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["kept_docs"], 3, "{stats}");
    let pf = &stats["filters"]["perplexity"];
    assert_eq!(pf["docs_removed"], 2, "{stats}");
    assert_eq!(pf["rules"]["high_perplexity"], 2, "{stats}");
    let removed = rejected_values(&out);
    assert_eq!(
        removed.keys().collect::<Vec<_>>(),
        vec!["gib0", "gib1"],
        "{removed:?}"
    );
    for (id, v) in &removed {
        // Scoring is deterministic: the same value as in the first run.
        assert!((v - values[id]).abs() < 1e-3, "{id}: {v} vs {}", values[id]);
    }
    let shown = String::from_utf8_lossy(&run.stdout);
    assert!(
        shown.contains("perplexity of the 3 kept documents"),
        "{shown}"
    );

    // Bad combinations are refused with the flag to fix.
    let run = kiln(&[
        "data",
        "curate",
        "--input",
        s(&input),
        "--output",
        s(&d.join("x")),
        "--max-perplexity",
        "10",
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("--perplexity-model"), "{err}");
}
