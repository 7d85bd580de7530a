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

const BOILERPLATE: &str = "Subscribe to our newsletter for weekly updates from the garden.";

/// One big JSONL file: documents with a shared boilerplate line, exact
/// copies, a document that is mostly boilerplate, bad lines and blank lines.
fn big_jsonl(dir: &Path) -> PathBuf {
    let mut lines = Vec::new();
    for i in 0..48u64 {
        let text = match i % 8 {
            3 => format!("{}\n{BOILERPLATE}", english(100 + i, 10)),
            5 => english(100 + i - 4, 10), // an exact copy of document i-4
            6 => format!(
                "{BOILERPLATE}\n{}\nThe river was quiet.",
                english(900 + i, 5)
            ),
            7 if i == 15 => "{\"broken".to_string(),
            _ => english(100 + i, 10),
        };
        if i == 15 {
            lines.push(text);
        } else {
            lines.push(json!({"id": format!("d{i}"), "text": text, "k": i}).to_string());
        }
        if i % 10 == 9 {
            lines.push(String::new());
        }
    }
    let path = dir.join("big.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn sorted_records(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = read_dir_records(dir)
        .iter()
        .map(|r| r.to_string())
        .collect();
    v.sort();
    v
}

/// A big file split into line-aligned parts, run as 3 `--shard`s plus a
/// final run, keeps the same documents (in order) and rejects the same
/// records as one unsplit run; line dedup included, since it runs in input
/// order across shards. A lost part is redone alone on resume.
#[test]
fn split_and_sharded_runs_equal_one_unsplit_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = big_jsonl(dir.path());
    let size = std::fs::metadata(&input).unwrap().len();
    let mut config = CurateConfig::fineweb();
    config.line_dedup.enabled = true;
    config.line_dedup.min_doc_words = 95;
    let opts = |out: &str, split_bytes: u64| {
        let mut config = config.clone();
        config.input.split_bytes = split_bytes;
        CurateOptions {
            inputs: vec![input.clone()],
            output: dir.path().join(out),
            config,
            strict: false,
            shard: None,
        }
    };
    let whole = opts("whole", 0);
    let r = curate(&whole, &Progress::default()).unwrap();
    assert_eq!(r.shards_run, vec![0]);
    let stats = r.stats.unwrap();

    let split = opts("split", size / 7);
    let mut run_parts = Vec::new();
    for i in 0..3 {
        let mut o = split.clone();
        o.shard = Some((i, 3));
        let r = curate(&o, &Progress::default()).unwrap();
        assert!(r.stats.is_none());
        run_parts.extend(r.shards_run);
    }
    run_parts.sort();
    assert!(run_parts.len() >= 6, "{run_parts:?}");
    assert_eq!(run_parts, (0..run_parts.len()).collect::<Vec<_>>());
    let r = curate(&split, &Progress::default()).unwrap();
    assert!(r.shards_run.is_empty());
    let split_stats = r.stats.unwrap();

    let kept = read_dir_records(&whole.output.join("kept"));
    assert_eq!(read_dir_records(&split.output.join("kept")), kept);
    assert_eq!(
        sorted_records(&split.output.join("rejected")),
        sorted_records(&whole.output.join("rejected"))
    );
    assert_eq!(split_stats.kept_docs, stats.kept_docs);
    assert_eq!(split_stats.filters["line_dedup"], {
        let mut f = stats.filters["line_dedup"].clone();
        f.time_s = split_stats.filters["line_dedup"].time_s;
        f
    });

    // Line dedup did its job: the boilerplate line survives once, in d3,
    // later copies are reported, and a document that was mostly
    // boilerplate was dropped as too short.
    let texts: Vec<&str> = kept.iter().map(|d| d["text"].as_str().unwrap()).collect();
    assert_eq!(texts.iter().filter(|t| t.contains(BOILERPLATE)).count(), 1);
    let d3 = kept.iter().find(|d| d["id"] == "d3").unwrap();
    assert!(d3["text"].as_str().unwrap().ends_with(BOILERPLATE));
    let rejected: Vec<Reject> = read_dir_records(&whole.output.join("rejected"))
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    let lines: Vec<&Reject> = rejected
        .iter()
        .filter(|r| r.filter == "line_dedup" && r.kind == "line")
        .collect();
    assert!(lines.len() >= 4, "{lines:?}");
    assert!(lines.iter().all(|r| r.rule == "duplicate_line"));
    let l = lines.iter().find(|r| r.id == "d11").unwrap();
    assert_eq!((l.doc_line, l.text.as_str()), (Some(11), BOILERPLATE));
    assert!(l.value.unwrap() < 1e-3 && l.line > 11);
    let short = rejected
        .iter()
        .find(|r| r.rule == "short_after_line_dedup")
        .expect("a document mostly boilerplate is dropped");
    assert_eq!(short.threshold, Some(95.0));
    assert!(short.value.unwrap() < 95.0);
    let exact = rejected
        .iter()
        .filter(|r| r.filter == "exact_dedup")
        .count();
    assert_eq!(exact, 6);
    let bad = rejected
        .iter()
        .find(|r| r.rule == "malformed_json")
        .unwrap();
    assert_eq!(bad.line, 17); // one blank line before it
    let removed: u64 = stats.filters.values().map(|f| f.docs_removed).sum();
    assert_eq!(removed + stats.kept_docs, stats.input_docs);
    assert_eq!(stats.input_docs, 48);

    // Kill/resume with parts: a lost part is the only one redone.
    std::fs::remove_file(split.output.join("work/shard-00002.jsonl.zst")).unwrap();
    let r = curate(&split, &Progress::default()).unwrap();
    assert_eq!(r.shards_run, vec![2]);
    assert_eq!(read_dir_records(&split.output.join("kept")), kept);
    assert_eq!(
        sorted_records(&split.output.join("rejected")),
        sorted_records(&whole.output.join("rejected"))
    );
}

/// FineWeb's format end to end: a pyarrow-written Parquet file (snappy,
/// 3 row groups) curated whole and split by row group, with the same result.
#[test]
fn parquet_input_curates_end_to_end() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fineweb_sample.parquet");
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (name, split_bytes) in [("whole", 0), ("by_group", 1)] {
        let mut config = CurateConfig::fineweb();
        config.input.split_bytes = split_bytes;
        let opts = CurateOptions {
            inputs: vec![fixture.clone()],
            output: dir.path().join(name),
            config,
            strict: false,
            shard: None,
        };
        let r = curate(&opts, &Progress::default()).unwrap();
        assert_eq!(r.shards_run.len(), if split_bytes == 0 { 1 } else { 3 });
        let stats = r.stats.unwrap();
        assert_eq!(stats.input_docs, 6);
        outs.push((
            read_dir_records(&opts.output.join("kept")),
            sorted_records(&opts.output.join("rejected")),
        ));
    }
    assert_eq!(outs[0], outs[1]);
    let kept = &outs[0].0;
    assert_eq!(
        ids(kept),
        vec!["<urn:uuid:a1>", "<urn:uuid:a2>", "<urn:uuid:a6>"]
    );
    assert_eq!(kept[1]["url"], "https://example.com/1");
    assert_eq!(kept[1]["token_count"], 101);
    let rejected: Vec<Reject> = outs[0]
        .1
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    let null = rejected.iter().find(|r| r.kind == "bad_input").unwrap();
    assert_eq!((null.rule.as_str(), null.line), ("missing_text", 3));
    assert!(null.file.ends_with("fineweb_sample.parquet"));
    let dup = rejected.iter().find(|r| r.id == "<urn:uuid:a4>").unwrap();
    assert_eq!(dup.rule, "duplicate");
    assert!(rejected.iter().any(|r| r.id == "<urn:uuid:a5>"));
}

/// A Parquet input without a `text` column stops the run with an error
/// naming the file and the columns it has.
#[test]
fn parquet_without_text_column_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.parquet");
    // A parquet file whose only column is `body` (a tiny footer-only file).
    let schema = std::sync::Arc::new(
        parquet::schema::parser::parse_message_type(
            "message doc { REQUIRED BYTE_ARRAY body (UTF8); }",
        )
        .unwrap(),
    );
    parquet::file::writer::SerializedFileWriter::new(
        std::fs::File::create(&p).unwrap(),
        schema,
        std::sync::Arc::new(parquet::file::properties::WriterProperties::builder().build()),
    )
    .unwrap()
    .close()
    .unwrap();
    let opts = CurateOptions {
        inputs: vec![p],
        output: dir.path().join("out"),
        config: CurateConfig::fineweb(),
        strict: false,
        shard: None,
    };
    let e = curate(&opts, &Progress::default()).unwrap_err().to_string();
    assert!(
        e.contains("in.parquet") && e.contains("no column 'text'; columns are body"),
        "{e}"
    );
}
