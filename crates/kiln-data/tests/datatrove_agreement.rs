//! kiln's quality filters against datatrove's, document by document, on
//! about 1,200 technical and web documents plus junk and duplicates
//! (tests/fixtures/datatrove_agreement.jsonl.zst, built by
//! scripts/make_datatrove_agreement_fixture.py with datatrove 0.10 and
//! spaCy 3.8). Every filter must make datatrove's keep/drop decision on at
//! least 99% of the documents of each kind, and the word and sentence
//! counts (the segmentation every rule stands on) must match on 99% too, so
//! a drift in segmentation fails here.

use kiln_data::filters::c4::{C4Outcome, C4};
use kiln_data::filters::fineweb::FineWeb;
use kiln_data::filters::gopher_quality::GopherQuality;
use kiln_data::filters::gopher_repetition::GopherRepetition;
use kiln_data::normalize::normalize;
use kiln_data::words::{count_sentences, py_splitlines, py_strip, split_words};
use serde_json::Value;
use std::collections::BTreeMap;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/datatrove_agreement.jsonl.zst"
);
const FILTERS: [&str; 4] = ["gopher_repetition", "gopher_quality", "c4", "fineweb"];
const MIN_AGREEMENT: f64 = 0.99;

struct Doc {
    id: String,
    kind: String,
    text: String,
    words: usize,
    sentences: usize,
    datatrove: BTreeMap<String, Option<String>>,
}

fn load() -> Vec<Doc> {
    let raw = std::fs::read(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let text = zstd::decode_all(&raw[..]).expect("fixture is zstd");
    String::from_utf8(text)
        .expect("fixture is UTF-8")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("fixture line is JSON");
            Doc {
                id: v["id"].as_str().unwrap().into(),
                kind: v["kind"].as_str().unwrap().into(),
                text: v["text"].as_str().unwrap().into(),
                words: v["words"].as_u64().unwrap() as usize,
                sentences: v["sentences"].as_u64().unwrap() as usize,
                datatrove: FILTERS
                    .iter()
                    .map(|f| (f.to_string(), v["datatrove"][f].as_str().map(String::from)))
                    .collect(),
            }
        })
        .collect()
}

/// kiln's decision under one filter: `None` kept, or the rule in
/// datatrove's spelling.
fn kiln(filter: &str, text: &str, words: &[&str]) -> Option<String> {
    match filter {
        "gopher_repetition" => GopherRepetition::default()
            .check(text, words)
            .map(|r| r.rule.to_string()),
        "gopher_quality" => GopherQuality::default().check(text, words).map(|r| {
            match r.rule {
                "below_avg_word_length" => "gopher_below_avg_threshold",
                "above_avg_word_length" => "gopher_above_avg_threshold",
                "not_enough_stop_words" => "gopher_enough_stop_words",
                other => return format!("gopher_{other}"),
            }
            .to_string()
        }),
        "c4" => match (C4 {
            filter_no_terminal_punct: false,
            ..Default::default()
        })
        .apply(text)
        {
            C4Outcome::Keep { .. } => None,
            C4Outcome::Drop(r) => Some(r.rule.to_string()),
        },
        "fineweb" => FineWeb::default()
            .check(text, words.len())
            .map(|r| r.rule.to_string()),
        _ => unreachable!(),
    }
}

#[test]
fn kiln_filters_decide_as_datatrove_on_technical_and_web_text() {
    let docs = load();
    assert!(docs.len() >= 1000, "fixture has {} documents", docs.len());
    // (kind, filter) -> (agreements, documents); and the same for the rule.
    let mut agree: BTreeMap<(String, String), (usize, usize, usize)> = BTreeMap::new();
    let mut seg: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut not_normalised = 0;
    for d in &docs {
        if normalize(&d.text) != d.text {
            not_normalised += 1;
        }
        let words = split_words(&d.text);
        let sentences: usize = py_splitlines(&d.text)
            .into_iter()
            .map(py_strip)
            .filter(|l| !l.is_empty())
            .map(count_sentences)
            .sum();
        let s = seg.entry(d.kind.clone()).or_default();
        s.0 += (words.len() == d.words) as usize;
        s.1 += (sentences == d.sentences) as usize;
        s.2 += 1;
        if words.len() != d.words || sentences != d.sentences {
            println!(
                "segmentation {}: words kiln {} datatrove {}, sentences kiln {} datatrove {}",
                d.id,
                words.len(),
                d.words,
                sentences,
                d.sentences
            );
        }
        for f in FILTERS {
            let k = kiln(f, &d.text, &words);
            let t = &d.datatrove[f];
            let a = agree.entry((d.kind.clone(), f.to_string())).or_default();
            a.0 += (k.is_none() == t.is_none()) as usize;
            a.1 += (k == *t) as usize;
            a.2 += 1;
            if k.is_none() != t.is_none() {
                println!("{f} {}: kiln {k:?}, datatrove {t:?}", d.id);
            }
        }
    }
    println!(
        "{} documents ({not_normalised} changed by kiln's normalize)",
        docs.len()
    );
    println!("kind        words    sentences");
    for (kind, (w, s, n)) in &seg {
        println!(
            "{kind:<11} {:6.2}%  {:6.2}%   ({n} docs)",
            100.0 * *w as f64 / *n as f64,
            100.0 * *s as f64 / *n as f64
        );
    }
    println!("kind        filter              keep/drop   rule");
    let mut failures = Vec::new();
    for ((kind, f), (a, r, n)) in &agree {
        let frac = *a as f64 / *n as f64;
        println!(
            "{kind:<11} {f:<19} {:6.2}%    {:6.2}%",
            100.0 * frac,
            100.0 * *r as f64 / *n as f64
        );
        if frac < MIN_AGREEMENT {
            failures.push(format!("{kind}/{f}: {:.2}%", 100.0 * frac));
        }
    }
    for (kind, (w, s, n)) in &seg {
        for (what, k) in [("words", w), ("sentences", s)] {
            let frac = *k as f64 / *n as f64;
            if frac < MIN_AGREEMENT {
                failures.push(format!("{kind} {what} counts: {:.2}%", 100.0 * frac));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "agreement with datatrove below 99%: {failures:?}"
    );
}
