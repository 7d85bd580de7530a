//! `kiln data curate` / `kiln data inspect` through the binary: every input
//! record is accounted for, removals keep their reason and file:line, and
//! `--strict` stops at the first bad record naming it.

use serde_json::{json, Value};

use crate::cli::{kiln, s};

/// Four distinct KJV chapters, an exact duplicate, a broken JSON line, a
/// record without text, and lorem ipsum.
fn write_input(dir: &std::path::Path) -> std::path::PathBuf {
    let kjv = include_str!("../fixtures/text/kjv_excerpt.txt");
    let chapters: Vec<&str> = kjv
        .split("\n\n")
        .map(str::trim)
        .filter(|c| c.len() > 2000)
        .take(4)
        .collect();
    assert_eq!(
        chapters.len(),
        4,
        "fixture has fewer chapters than expected"
    );
    let mut lines: Vec<String> = chapters
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"id": format!("ch{i}"), "text": c}).to_string())
        .collect();
    lines.push(json!({"id": "dup", "text": chapters[0]}).to_string()); // line 5
    lines.push("{\"id\": \"broken\", \"text\": \"unterminated".into()); // line 6
    lines.push(json!({"id": "notext", "body": "no text field"}).to_string()); // line 7
    let lorem = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(40);
    lines.push(json!({"id": "lorem", "text": lorem}).to_string()); // line 8
    let path = dir.join("docs.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn curate_accounts_for_every_record_and_inspect_shows_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let out = dir.path().join("curated");
    let run = kiln(&["data", "curate", "--input", s(&input), "--output", s(&out)]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let stats: Value =
        serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    let kept = stats["kept_docs"].as_u64().unwrap();
    let removed: u64 = stats["filters"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f["docs_removed"].as_u64().unwrap())
        .sum();
    // 8 records in, each either kept or removed exactly once.
    assert_eq!(kept + removed, 8, "{stats}");
    assert!(kept >= 1, "no chapter kept: {stats}");
    assert_eq!(
        stats["filters"]["exact_dedup"]["docs_removed"], 1,
        "{stats}"
    );

    let inspect = kiln(&["data", "inspect", s(&out), "--sample", "5"]);
    assert!(inspect.status.success());
    let shown = String::from_utf8_lossy(&inspect.stdout);
    assert!(shown.contains("exact_dedup"), "{shown}");
    assert!(
        shown.contains("docs.jsonl:6"),
        "broken line not reported:\n{shown}"
    );
    assert!(
        shown.contains("docs.jsonl:7"),
        "text-less record not reported:\n{shown}"
    );
    assert!(shown.contains("lorem"), "lorem ipsum not removed:\n{shown}");
}

#[test]
fn strict_stops_at_the_first_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let out = dir.path().join("curated");
    let run = kiln(&[
        "data",
        "curate",
        "--input",
        s(&input),
        "--output",
        s(&out),
        "--strict",
    ]);
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("docs.jsonl:6"), "{err}");
}
