//! Whole-page tests: a small run directory in, one HTML page out.

use std::path::Path;

use super::*;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn metrics(n: usize, line: impl Fn(usize) -> String) -> String {
    (1..=n).map(|i| line(i) + "\n").collect()
}

/// pretrain + sft + dpo + eval, with a model output that tries to inject
/// markup.
fn small_run(dir: &Path) {
    write(
        dir,
        "pretrain/metrics.jsonl",
        &metrics(60, |i| {
            format!(
                "{{\"step\":{i},\"loss\":{},\"lr\":0.001,\"grad_norm\":1.5,\"tokens_per_s\":5000,\"elapsed_s\":{i}}}",
                8.0 / (i as f64).sqrt()
            )
        }),
    );
    write(
        dir,
        "sft/metrics.jsonl",
        &metrics(20, |i| {
            format!(
                "{{\"step\":{i},\"loss\":{},\"val_loss\":{}}}",
                3.0 - i as f64 * 0.05,
                3.1 - i as f64 * 0.04
            )
        }),
    );
    write(
        dir,
        "dpo/metrics.jsonl",
        &metrics(20, |i| {
            format!(
                "{{\"step\":{i},\"loss\":0.69,\"margin\":{},\"accuracy\":0.6}}",
                i as f64 * 0.1
            )
        }),
    );
    write(
        dir,
        "summary.json",
        r#"{"curate": {"input_docs": 120, "input_bytes": 90000, "kept_docs": 100, "kept_bytes": 80000,
                       "removed_docs_by_filter": {"lang": 15, "dedup": 5}},
            "pretrain": {"model": "tiny", "final_train_loss": 1.03, "steps": 60, "tokens_per_step": 512},
            "dpo": {"steps": 20, "after": {"accuracy": 0.75}},
            "samples": [{"prompt": "In the beginning", "completion": " was the <b>word</b>"}]}"#,
    );
    // The stage's own summary repeats the pipeline's figures, plus one.
    write(
        dir,
        "dpo/summary.json",
        r#"{"steps": 20, "after": {"accuracy": 0.75}, "seconds": 12.5}"#,
    );
    write(
        dir,
        "eval/results.json",
        r#"{"models": [
              {"name": "sft", "judge_score": 0.4, "win_rate": 0.5, "by_task": {"arithmetic": {"judge_score": 0.25}}},
              {"name": "dpo", "judge_score": 0.55, "win_rate": 0.62}],
            "samples": [{"prompt": "What is 2+2?", "task": "arithmetic",
                         "responses": {"sft": {"text": "<script>alert('pwned')</script>", "score": 0},
                                       "dpo": {"text": "4", "score": 1}}}]}"#,
    );
}

#[test]
fn full_page_has_every_section_chart_and_sample() {
    let dir = tempfile::tempdir().unwrap();
    small_run(dir.path());
    let html = render_report(dir.path()).unwrap();
    // Results first, then curves, samples, and the folded tables last.
    let at = |id: &str| {
        html.find(&format!("<section id=\"{id}\">"))
            .unwrap_or_else(|| panic!("section {id}"))
    };
    assert!(at("results") < at("training"));
    assert!(at("training") < at("samples"));
    assert!(at("samples") < at("figures"));
    // No key/value table before the charts: the first table is the samples.
    let first_table = html.find("<table").unwrap();
    assert!(first_table > at("samples"), "a table before the samples");
    assert!(html.find("id=\"judge-chart\"").unwrap() < at("training"));
    for stage in ["pretrain", "sft", "dpo"] {
        assert!(
            html.contains(&format!("id=\"stage-{stage}\"")),
            "stage {stage}"
        );
    }
    // pretrain: loss, lr, grad norm, throughput; sft: loss; dpo: loss,
    // margins, accuracy; and the pretraining loss on the first screen.
    assert_eq!(html.matches("class=\"chart line-chart\"").count(), 9);
    assert!(html.contains("aria-label=\"Pretraining loss\""));
    // sft loss + val_loss share one chart: two series there.
    assert!(html.contains("aria-label=\"sft: Loss\""));
    // One judge chart: judge score and win rate (no KL in this file) for
    // both models, each bar with its number.
    assert_eq!(html.matches("class=\"chart panel-chart\"").count(), 1);
    assert_eq!(html.matches("class=\"bar\"").count(), 4);
    assert!(html.contains(">0.55</text>") && html.contains(">62.0%</text>"));
    // The funnel: in, removed per filter (most first), kept.
    let funnel = &html[html.find("id=\"funnel\"").unwrap()..];
    let pos = |s: &str| {
        funnel
            .find(s)
            .unwrap_or_else(|| panic!("{s} not in the funnel"))
    };
    assert!(
        pos("120 docs · 90.0 kB") < pos("−\u{a0}Lang") && pos("−\u{a0}Lang") < pos("−\u{a0}Dedup")
    );
    assert!(pos("−\u{a0}Dedup") < pos("100 docs · 80.0 kB"));
    // Tokens trained: steps x tokens per step.
    assert!(html.contains("<dd>30.7k<span class=\"detail\">60 steps × 512</span>"));
    // The verdict: DPO's 62% beats the 60% target; no reward model ran.
    assert!(html.contains("DPO win rate against SFT<span class=\"goal\">target &gt; 60%</span></span><span class=\"val\">62.0%<span class=\"word\">met</span>"));
    assert!(html.contains("Reward model accuracy on held-out pairs and tasks<span class=\"goal\">target ≥ 90%</span></span><span class=\"val\">—<span class=\"word\">not measured</span>"));
    // dpo's figures once, merged with its own summary.json, readable labels.
    assert_eq!(html.matches("After › accuracy").count(), 1);
    assert!(html.contains("<td>Seconds</td>"));
    assert!(html.contains("Removed documents by filter › lang"));
    assert!(!html.contains("<td>removed_docs_by_filter.lang</td>"));
    assert!(html.contains("What is 2+2?") && html.contains(">arithmetic</span>"));
    assert!(html.contains("score 1</span>"));
    // The missing stages are listed.
    for s in ["reward: not run", "ppo: not run", "grpo: not run"] {
        assert!(html.contains(s), "{s}");
    }
}

#[test]
fn model_outputs_cannot_inject_markup() {
    let dir = tempfile::tempdir().unwrap();
    small_run(dir.path());
    let html = render_report(dir.path()).unwrap();
    assert!(!html.contains("<script"), "a script tag got through");
    assert!(html.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"));
    assert!(html.contains(" was the &lt;b&gt;word&lt;/b&gt;"));
}

#[test]
fn page_is_self_contained() {
    let dir = tempfile::tempdir().unwrap();
    small_run(dir.path());
    let html = render_report(dir.path()).unwrap();
    for forbidden in [
        "<script", "<link", "src=", "url(", "@import", "http://", "https://",
    ] {
        assert!(!html.contains(forbidden), "page contains {forbidden}");
    }
    // Only in-page anchors.
    for href in html.split("href=\"").skip(1) {
        assert!(
            href.starts_with('#'),
            "external link {}",
            &href[..20.min(href.len())]
        );
    }
}

#[test]
fn a_run_that_stopped_after_pretraining_gets_a_report_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "pretrain/metrics.jsonl",
        "{\"step\":1,\"loss\":10.9,\"lr\":0.0001}\n{\"step\":2,\"loss\":9.8,\"lr\":0.0002}\n",
    );
    let out = write_report(dir.path()).unwrap();
    assert_eq!(out, dir.path().join("report.html"));
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("badge ran\" href=\"#stage-pretrain\">pretrain · 2 steps"));
    assert!(html.contains("badge absent\">sft · not run"));
    assert!(html.contains("eval/results.json: not found"));
    assert!(html.contains("summary.json: not found"));
    assert!(html.contains("No evaluation results"));
    assert!(html.contains("No samples"));
    assert!(html.contains("No curation totals"));
    // Loss and learning rate, and the loss again on the first screen.
    assert_eq!(html.matches("class=\"chart line-chart\"").count(), 3);
}

#[test]
fn an_empty_directory_still_gets_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let html = render_report(dir.path()).unwrap();
    assert!(html.contains("nothing to plot"));
    assert!(html.ends_with("</html>\n"));
}

#[test]
fn a_malformed_file_fails_naming_it_and_leaves_the_old_report() {
    let dir = tempfile::tempdir().unwrap();
    small_run(dir.path());
    let out = write_report(dir.path()).unwrap();
    let before = std::fs::read(&out).unwrap();
    write(
        dir.path(),
        "dpo/metrics.jsonl",
        "{\"step\":1,\"loss\":0.7}\n{\"step\":2,\"loss\":0.6,}\n{\"step\":3}\n",
    );
    let msg = write_report(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("dpo/metrics.jsonl:2: not valid JSON"), "{msg}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn write_report_to_creates_the_parent_directory() {
    let dir = tempfile::tempdir().unwrap();
    small_run(dir.path());
    let out = dir.path().join("elsewhere/deeper/r.html");
    write_report_to(dir.path(), &out).unwrap();
    assert!(std::fs::read_to_string(out)
        .unwrap()
        .starts_with("<!DOCTYPE html>"));
}
