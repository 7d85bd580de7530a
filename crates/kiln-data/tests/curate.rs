//! End-to-end `curate` on a small fixture: every input document is
//! accounted for, stats agree with the rejected records, dedup and
//! decontamination fire, bad input is reported, and resume redoes only the
//! shard whose output was removed.

use kiln_data::curate::{curate, CurateError, CurateOptions, Progress};
use kiln_data::process::Reject;
use kiln_data::CurateConfig;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

const VOCAB: &[&str] = &[
    "river",
    "people",
    "morning",
    "garden",
    "window",
    "letter",
    "market",
    "teacher",
    "winter",
    "story",
    "village",
    "mountain",
    "kitchen",
    "friend",
    "music",
    "evening",
    "doctor",
    "bridge",
    "forest",
    "child",
    "table",
    "summer",
    "road",
    "house",
    "water",
    "light",
    "paper",
    "city",
    "answer",
    "question",
    "family",
    "country",
    "history",
    "language",
    "picture",
    "journey",
    "walked",
    "carried",
    "opened",
    "remembered",
    "wrote",
    "found",
    "watched",
    "built",
    "painted",
    "quiet",
    "bright",
    "old",
    "small",
    "famous",
    "careful",
    "gentle",
    "early",
    "ancient",
    "warm",
];
const GLUE: &[&str] = &[
    "the", "of", "and", "to", "with", "that", "in", "a", "was", "from", "by", "on",
];

/// A readable-ish English document, unique per seed (random word order).
fn english(seed: u64, sentences: usize) -> String {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = |n: usize| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as usize) % n
    };
    let mut lines = Vec::new();
    for _ in 0..sentences {
        let len = 9 + next(7);
        let mut w: Vec<String> = Vec::new();
        for i in 0..len {
            let word = if i % 2 == 1 {
                GLUE[next(GLUE.len())]
            } else {
                VOCAB[next(VOCAB.len())]
            };
            w.push(word.to_string());
        }
        let mut sent = w.join(" ");
        sent[..1].make_ascii_uppercase();
        sent.push('.');
        lines.push(sent);
    }
    lines.join("\n")
}

struct Fixture {
    _dir: tempfile::TempDir,
    inputs: Vec<PathBuf>,
    out: PathBuf,
    eval: PathBuf,
}

const EVAL: &str =
    "When forty winters shall besiege thy brow and dig deep trenches in thy beauty's field \
    thy youth's proud livery so gazed on now will be a tattered weed of small worth held";

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in");
    std::fs::create_dir(&inp).unwrap();
    let doc = |id: &str, text: &str| {
        json!({"id": id, "text": text, "url": format!("https://example.com/{id}")}).to_string()
    };

    // Shard 0: a.jsonl - good docs, duplicates, bad lines.
    let good0 = english(1, 12);
    let good1 = english(2, 12);
    let near1 = good1.replacen("the", "this", 1);
    let mut a = vec![
        doc("good-0", &good0),
        doc("good-1", &good1),
        doc("exact-copy-of-0", &good0),
        doc("near-copy-of-1", &near1),
        doc("short", &english(9, 2)),
        "{\"id\": \"broken\", \"text\": \"unterminated".to_string(),
        "{\"id\": \"no-text\", \"body\": \"x\"}".to_string(),
        doc("empty", "   \n  "),
        doc("german", "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann in den Wald, wo er mit seiner Familie lebt. Die Kinder spielen im Garten und die Eltern trinken Kaffee auf der Terrasse. Am Abend essen alle zusammen und erzählen sich Geschichten aus alten Zeiten."),
    ];
    a.push(doc(
        "lorem",
        &format!(
            "{}\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
            english(3, 8)
        ),
    ));
    let mut f = std::fs::File::create(inp.join("a.jsonl")).unwrap();
    for l in &a {
        writeln!(f, "{l}").unwrap();
    }
    f.write_all(b"{\"id\": \"bad-utf8\", \"text\": \"caf\xe9\"}\n")
        .unwrap();
    drop(f);

    // Shard 1: b.jsonl.zst - good docs, a cookie line, a contaminated doc.
    let b = [
        doc("good-2", &english(4, 12)),
        doc(
            "cookies",
            &format!(
                "{}\nThis website uses cookies to improve your experience.",
                english(5, 12)
            ),
        ),
        doc(
            "contaminated",
            &format!("{}\nAs the poet said, {EVAL}.", english(6, 12)),
        ),
        doc("good-3", &english(7, 12)),
    ]
    .join("\n");
    std::fs::write(
        inp.join("b.jsonl.zst"),
        zstd::encode_all(b.as_bytes(), 3).unwrap(),
    )
    .unwrap();

    // Shard 2: c.txt - one document.
    std::fs::write(inp.join("c.txt"), english(8, 12)).unwrap();

    let eval = dir.path().join("eval.jsonl");
    std::fs::write(
        &eval,
        format!("{}\n", json!({"id": "sonnet-2", "text": EVAL})),
    )
    .unwrap();
    let out = dir.path().join("out");
    Fixture {
        inputs: vec![inp],
        out,
        eval,
        _dir: dir,
    }
}

fn options(fx: &Fixture) -> CurateOptions {
    let mut config = CurateConfig::fineweb();
    config.decontamination.eval = vec![fx.eval.clone()];
    CurateOptions {
        inputs: fx.inputs.clone(),
        output: fx.out.clone(),
        config,
        strict: false,
        shard: None,
    }
}

fn read_zst_lines(path: &Path) -> Vec<Value> {
    let f = std::fs::File::open(path).unwrap();
    std::io::BufReader::new(zstd::stream::read::Decoder::new(f).unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

fn read_dir_records(dir: &Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().flat_map(|f| read_zst_lines(f)).collect()
}

fn ids(v: &[Value]) -> Vec<String> {
    v.iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn curate_accounts_for_every_document() {
    let fx = fixture();
    let report = curate(&options(&fx), &Progress::default()).unwrap();
    let stats = report.stats.expect("dedup ran");
    assert_eq!(report.shards_run, vec![0, 1, 2]);

    let kept = read_dir_records(&fx.out.join("kept"));
    let rejected: Vec<Reject> = read_dir_records(&fx.out.join("rejected"))
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    let removed_docs: Vec<&Reject> = rejected.iter().filter(|r| r.kind != "line").collect();

    // 11 + 4 + 1 input records; each is either kept or rejected once.
    assert_eq!(stats.input_docs, 16);
    assert_eq!(kept.len() + removed_docs.len(), 16);
    assert_eq!(stats.kept_docs as usize, kept.len());
    let mut kept_ids = ids(&kept);
    kept_ids.sort();
    assert_eq!(
        kept_ids,
        vec!["c", "cookies", "good-0", "good-1", "good-2", "good-3"]
    );
    // Metadata survives; the cookie line was cut and reported.
    let cookies = kept.iter().find(|d| d["id"] == "cookies").unwrap();
    assert!(!cookies["text"].as_str().unwrap().contains("cookies"));
    assert_eq!(cookies["url"], "https://example.com/cookies");

    // Why each document went, with file:line.
    let why: BTreeMap<String, String> = removed_docs
        .iter()
        .map(|r| {
            (
                if r.id.is_empty() {
                    format!("line{}", r.line)
                } else {
                    r.id.clone()
                },
                format!("{}/{}", r.filter, r.rule),
            )
        })
        .collect();
    assert_eq!(why["exact-copy-of-0"], "exact_dedup/duplicate");
    assert_eq!(why["near-copy-of-1"], "minhash/near_duplicate");
    assert_eq!(why["short"], "gopher_quality/short_doc");
    assert_eq!(why["empty"], "input/empty_document");
    assert_eq!(why["german"], "language/other_language");
    assert_eq!(why["lorem"], "c4/lorem_ipsum");
    assert_eq!(why["contaminated"], "decontamination/eval_ngram_overlap");
    assert_eq!(why["line6"], "input/malformed_json");
    assert_eq!(why["line7"], "input/missing_text");
    assert_eq!(why["line11"], "input/invalid_utf8");
    let bad = removed_docs
        .iter()
        .find(|r| r.rule == "missing_text")
        .unwrap();
    assert!(bad.file.ends_with("a.jsonl") && bad.line == 7);
    let cont = removed_docs
        .iter()
        .find(|r| r.id == "contaminated")
        .unwrap();
    assert!(cont.detail.as_deref().unwrap().contains("sonnet-2"));
    let cookie_line = rejected
        .iter()
        .find(|r| r.kind == "line" && r.id == "cookies")
        .unwrap();
    assert_eq!(cookie_line.rule, "policy");

    // stats.json == counts of rejected records, per filter.
    let on_disk: kiln_data::stats::Stats =
        serde_json::from_slice(&std::fs::read(fx.out.join("stats.json")).unwrap()).unwrap();
    let without_times = |s: &kiln_data::stats::Stats| {
        let mut s = s.clone();
        s.wall_s = 0.0;
        s.filters.values_mut().for_each(|f| f.time_s = 0.0);
        s
    };
    assert_eq!(without_times(&on_disk), without_times(&stats));
    assert!(stats.filters["input"].bytes_removed > 0);
    let mut per_filter: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &rejected {
        let e = per_filter.entry(r.filter.clone()).or_default();
        if r.kind == "line" {
            e.1 += 1
        } else {
            e.0 += 1
        }
    }
    for (f, (docs, lines)) in &per_filter {
        assert_eq!(stats.filters[f].docs_removed, *docs, "{f}");
        assert_eq!(stats.filters[f].lines_removed, *lines, "{f}");
    }
    let total_removed: u64 = stats.filters.values().map(|f| f.docs_removed).sum();
    assert_eq!(total_removed + stats.kept_docs, stats.input_docs);
}

#[test]
fn resume_redoes_only_the_missing_shard() {
    let fx = fixture();
    let opts = options(&fx);
    curate(&opts, &Progress::default()).unwrap();
    let first = read_dir_records(&fx.out.join("kept"));
    let first_rej = read_dir_records(&fx.out.join("rejected"));

    std::fs::remove_file(fx.out.join("work/shard-00001.jsonl.zst")).unwrap();
    let report = curate(&opts, &Progress::default()).unwrap();
    assert_eq!(report.shards_run, vec![1]);
    assert_eq!(report.shards_skipped, vec![0, 2]);
    assert_eq!(read_dir_records(&fx.out.join("kept")), first);
    assert_eq!(read_dir_records(&fx.out.join("rejected")), first_rej);

    // Nothing to redo the third time.
    let report = curate(&opts, &Progress::default()).unwrap();
    assert!(report.shards_run.is_empty());
}

#[test]
fn shard_runs_then_a_final_run_equal_one_run() {
    let fx = fixture();
    let mut opts = options(&fx);
    for i in 0..2 {
        opts.shard = Some((i, 2));
        let r = curate(&opts, &Progress::default()).unwrap();
        assert!(r.stats.is_none());
        assert_eq!(r.shards_run, if i == 0 { vec![0, 2] } else { vec![1] });
    }
    opts.shard = None;
    let r = curate(&opts, &Progress::default()).unwrap();
    assert!(r.shards_run.is_empty());
    let sharded = read_dir_records(&fx.out.join("kept"));

    let fx2 = fixture();
    curate(&options(&fx2), &Progress::default()).unwrap();
    assert_eq!(ids(&sharded), ids(&read_dir_records(&fx2.out.join("kept"))));
}

#[test]
fn strict_fails_at_the_first_bad_record() {
    let fx = fixture();
    let mut opts = options(&fx);
    opts.strict = true;
    match curate(&opts, &Progress::default()) {
        Err(CurateError::Strict { origin, reason, .. }) => {
            assert!(origin.file.ends_with("a.jsonl"));
            assert_eq!((origin.line, reason.as_str()), (6, "malformed_json"));
        }
        other => panic!("expected a strict error, got {other:?}"),
    }
}
