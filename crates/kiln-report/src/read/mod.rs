//! Reading a run directory: which stages ran, their metrics, the summary
//! and the evaluation, and what is missing (a report of a partial run says
//! so instead of failing).
//!
//! Layout read (all optional):
//!
//! ```text
//! RUN/summary.json              headline figures per stage, pretrain samples
//! RUN/<stage>/metrics.jsonl     one JSON object per step, for pretrain, sft,
//!                               reward, dpo, ppo, grpo and any other directory
//! RUN/eval/results.json         per-model evaluation and samples
//! RUN/curated/stats.json        curation totals per filter
//! ```

pub mod curation;
pub mod eval;
pub mod metrics;
pub mod summary;

use std::path::{Path, PathBuf};

pub use curation::Funnel;
pub use eval::{EvalResults, ModelEval, Response, SampleRow};
pub use metrics::{Column, StageMetrics};
pub use summary::Summary;

use crate::ReportError;

/// The pipeline's training stages, in pipeline order.
pub const KNOWN_STAGES: [&str; 6] = ["pretrain", "sft", "reward", "dpo", "ppo", "grpo"];

#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub summary: Option<Summary>,
    /// Known stages in pipeline order, then other directories by name.
    pub stages: Vec<StageMetrics>,
    /// `STAGE/summary.json` of the stages that wrote one: (stage, figures).
    pub stage_summaries: Vec<(String, Vec<(String, String)>)>,
    pub eval: Option<EvalResults>,
    /// Documents and bytes through curation (stats.json or summary.json).
    pub funnel: Option<Funnel>,
    /// What the report cannot show, one line each.
    pub missing: Vec<String>,
}

impl Run {
    pub fn stage(&self, name: &str) -> Option<&StageMetrics> {
        self.stages.iter().find(|s| s.stage == name)
    }
}

/// Sort key putting pipeline stages (and models named after them) first, in
/// pipeline order.
pub fn stage_rank(name: &str) -> usize {
    KNOWN_STAGES
        .iter()
        .position(|s| *s == name)
        .unwrap_or(KNOWN_STAGES.len())
}

/// Sort key of stage (or model) `name` among `names`: pipeline order, and an
/// RLHF round `X_roundN` next to its stage `X`. Round 1 of the reward model
/// is `reward` (before `reward_round2`); the last PPO round is `ppo`, after
/// `ppo_round1`, ... (a plain name goes last when `X_round1` exists).
pub fn stage_order_key(name: &str, names: &[&str]) -> (usize, usize) {
    if let Some((base, n)) = name.rsplit_once("_round") {
        if let Ok(n) = n.parse::<usize>() {
            return (stage_rank(base), n);
        }
    }
    let round1 = format!("{name}_round1");
    let last = names.contains(&round1.as_str());
    (stage_rank(name), if last { usize::MAX } else { 1 })
}

pub fn read_run(dir: &Path) -> Result<Run, ReportError> {
    if !dir.is_dir() {
        return Err(ReportError::NotARunDir {
            path: dir.to_path_buf(),
        });
    }
    let mut missing = Vec::new();

    let summary_path = dir.join("summary.json");
    let summary = if summary_path.is_file() {
        Some(summary::read_summary(&summary_path)?)
    } else {
        missing.push("summary.json: not found (the pipeline writes it when it finishes)".into());
        None
    };

    let funnel = curation::read_funnel(dir, summary.as_ref())?;

    let mut stage_dirs: Vec<String> = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| ReportError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ReportError::io(dir, e))?;
        if entry.path().join("metrics.jsonl").is_file() {
            if let Some(name) = entry.file_name().to_str() {
                stage_dirs.push(name.to_string());
            }
        }
    }
    let names: Vec<String> = stage_dirs.clone();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    stage_dirs.sort_by(|a, b| {
        (stage_order_key(a, &names).cmp(&stage_order_key(b, &names))).then(a.cmp(b))
    });
    let mut stages = Vec::new();
    let mut stage_summaries = Vec::new();
    for name in &stage_dirs {
        let path = dir.join(name).join("metrics.jsonl");
        stages.push(metrics::read_metrics(name, &path)?);
        let summary_path = dir.join(name).join("summary.json");
        if summary_path.is_file() {
            stage_summaries.push((name.clone(), summary::read_stage_summary(&summary_path)?));
        }
    }
    for known in KNOWN_STAGES {
        if !stage_dirs.iter().any(|s| s == known) {
            missing.push(format!("{known}: not run (no {known}/metrics.jsonl)"));
        }
    }

    let eval_path = dir.join("eval").join("results.json");
    let eval = if eval_path.is_file() {
        let mut e = eval::read_eval(&eval_path)?;
        order_by_stage(&mut e);
        Some(e)
    } else {
        missing.push(
            "eval/results.json: not found (no judge scores, win rates or chat samples)".into(),
        );
        None
    };

    Ok(Run {
        dir: dir.to_path_buf(),
        summary,
        stages,
        stage_summaries,
        eval,
        funnel,
        missing,
    })
}

/// Models (and each sample's responses) in pipeline order: the table then
/// reads left to right as the pipeline ran.
fn order_by_stage(e: &mut EvalResults) {
    let names: Vec<String> = e.models.iter().map(|m| m.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    e.models.sort_by_key(|m| stage_order_key(&m.name, &names));
    let model_rank = |name: &str| {
        e.models
            .iter()
            .position(|m| m.name == name)
            .unwrap_or(e.models.len())
    };
    let ranks: Vec<Vec<usize>> = e
        .samples
        .iter()
        .map(|row| row.responses.iter().map(|r| model_rank(&r.model)).collect())
        .collect();
    for (row, ranks) in e.samples.iter_mut().zip(ranks) {
        let mut paired: Vec<(usize, Response)> =
            ranks.into_iter().zip(row.responses.drain(..)).collect();
        paired.sort_by_key(|p| p.0);
        row.responses = paired.into_iter().map(|p| p.1).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn rlhf_rounds_sort_next_to_their_stage() {
        let names = [
            "ppo",
            "dpo",
            "reward_round3",
            "pretrain",
            "ppo_round2",
            "reward",
            "sft",
            "ppo_round1",
            "reward_round2",
            "zeta",
        ];
        let mut sorted = names.to_vec();
        sorted.sort_by_key(|n| (stage_order_key(n, &names), n.to_string()));
        assert_eq!(
            sorted,
            [
                "pretrain",
                "sft",
                "reward",
                "reward_round2",
                "reward_round3",
                "dpo",
                "ppo_round1",
                "ppo_round2",
                "ppo",
                "zeta"
            ]
        );
        // Without rounds, `ppo` keeps its place.
        let plain = ["ppo", "sft", "dpo"];
        let mut sorted = plain.to_vec();
        sorted.sort_by_key(|n| stage_order_key(n, &plain));
        assert_eq!(sorted, ["sft", "dpo", "ppo"]);
    }

    #[test]
    fn a_run_that_stopped_after_pretraining_reads_and_lists_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "pretrain/metrics.jsonl",
            "{\"step\":1,\"loss\":10.0}\n",
        );
        let run = read_run(dir.path()).unwrap();
        assert_eq!(run.stages.len(), 1);
        assert!(run.summary.is_none() && run.eval.is_none());
        let missing = run.missing.join("\n");
        for s in [
            "summary.json",
            "sft: not run",
            "dpo: not run",
            "grpo: not run",
            "eval/results.json",
        ] {
            assert!(missing.contains(s), "{s} not in {missing}");
        }
        assert!(!missing.contains("pretrain"));
    }

    #[test]
    fn stages_in_pipeline_order_then_other_directories() {
        let dir = tempfile::tempdir().unwrap();
        for s in ["zeta", "ppo", "dpo-ipo", "pretrain", "sft"] {
            write(
                dir.path(),
                &format!("{s}/metrics.jsonl"),
                "{\"step\":1,\"loss\":1.0}\n",
            );
        }
        std::fs::create_dir_all(dir.path().join("tokens")).unwrap();
        let run = read_run(dir.path()).unwrap();
        let names: Vec<&str> = run.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names, ["pretrain", "sft", "ppo", "dpo-ipo", "zeta"]);
    }

    #[test]
    fn a_malformed_metrics_line_fails_the_whole_read_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sft/metrics.jsonl", "{\"step\":1}\n{oops}\n");
        let msg = read_run(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("sft/metrics.jsonl:2: not valid JSON"), "{msg}");
    }

    #[test]
    fn stage_summaries_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "dpo/metrics.jsonl",
            "{\"step\":1,\"loss\":0.7}\n",
        );
        write(
            dir.path(),
            "dpo/summary.json",
            "{\"steps\": 1, \"after\": {\"accuracy\": 0.75}}",
        );
        let run = read_run(dir.path()).unwrap();
        assert_eq!(
            run.stage_summaries,
            vec![(
                "dpo".to_string(),
                vec![
                    ("after.accuracy".to_string(), "0.75".to_string()),
                    ("steps".to_string(), "1".to_string())
                ]
            )]
        );
        write(
            dir.path(),
            "dpo/summary.json",
            "{\"steps\": 1,\n\"x\": nope}",
        );
        let msg = read_run(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("dpo/summary.json:2: not valid JSON"), "{msg}");
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let msg = read_run(Path::new("/nonexistent/run"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("/nonexistent/run: not a run directory"),
            "{msg}"
        );
    }

    #[test]
    fn eval_models_and_responses_follow_the_pipeline_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "eval/results.json",
            r#"{"models": [{"name": "ppo", "judge_score": 0.7}, {"name": "pretrain", "judge_score": 0.1},
                            {"name": "sft", "judge_score": 0.4}],
                "samples": [{"prompt": "p", "responses": {"ppo": "c", "sft": "b", "pretrain": "a"}}]}"#,
        );
        let run = read_run(dir.path()).unwrap();
        let eval = run.eval.unwrap();
        let names: Vec<&str> = eval.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["pretrain", "sft", "ppo"]);
        let texts: Vec<&str> = eval.samples[0]
            .responses
            .iter()
            .map(|r| r.text.as_str())
            .collect();
        assert_eq!(texts, ["a", "b", "c"]);
    }
}
