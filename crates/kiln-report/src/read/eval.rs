//! `RUN/eval/results.json`: evaluation of each stage's model. The reader
//! accepts the shapes below and ignores fields it does not know, so the
//! evaluator can grow without breaking reports.
//!
//! ```json
//! { "models": { "sft": <kiln_eval::Evaluation> + optional "win_rate", "kl", ... },
//!   "samples": [ { "prompt": "...", "task": "sentiment",
//!                  "responses": { "sft": { "text": "...", "score": 0.5 } } } ] }
//! ```
//! where an `Evaluation` is `{"mean_score", "per_kind": [{"kind", "mean",
//! "n"}], "ended_rate", "mean_reply_tokens", "responses": [{"task":
//! {"prompt", "spec": {"kind", ..}}, "text", "score", "reason", ..}]}`.
//!
//! Also accepted: `models` as a list of objects with a `name`; no `models`
//! at all (every top-level object is a model); per-kind figures as an
//! object `{"arithmetic": {..}}` under `by_task`/`tasks`/`per_task`/
//! `by_kind`/`per_kind`; responses under `responses` or `samples`, with
//! the text under `text`/`response`/`completion`/`output` and the score
//! under `score`/`judge_score`/`reward`. The mean judge score is shown as
//! `judge_score` whether the file says `judge_score`, `judge` (as `kiln pipeline`
//! writes it), `mean_score` or `score` (and `mean` for a task kind).

use std::path::Path;

use serde_json::{Map, Value};

use super::metrics::kind_of;
use crate::ReportError;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalResults {
    pub models: Vec<ModelEval>,
    pub samples: Vec<SampleRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelEval {
    pub name: String,
    /// Overall figures, in file order.
    pub figures: Vec<(String, f64)>,
    /// Per task kind: (task, figures).
    pub tasks: Vec<(String, Vec<(String, f64)>)>,
}

impl ModelEval {
    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.0 == name).map(|f| f.1)
    }
}

/// One prompt and what each model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    pub prompt: String,
    pub task: Option<String>,
    pub responses: Vec<Response>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub model: String,
    pub text: String,
    pub score: Option<f64>,
    /// The judge's reason for the score.
    pub reason: Option<String>,
}

/// The canonical name of the mean judge score.
pub const JUDGE_SCORE: &str = "judge_score";
const SCORE_ALIASES: [&str; 4] = ["judge_score", "judge", "mean_score", "score"];
const TASK_KEYS: [&str; 6] = [
    "by_task", "tasks", "per_task", "by_kind", "per_kind", "kinds",
];
const RESPONSE_LIST_KEYS: [&str; 2] = ["responses", "samples"];
const NAME_KEYS: [&str; 3] = ["name", "model", "stage"];
const TEXT_KEYS: [&str; 4] = ["text", "response", "completion", "output"];
const SCORE_KEYS: [&str; 3] = ["score", "judge_score", "reward"];
const TASK_NAME_KEYS: [&str; 3] = ["task", "kind", "task_kind"];
/// Top-level keys that are never a model (when there is no `models`).
const NOT_MODELS: [&str; 3] = ["samples", "meta", "config"];

pub fn read_eval(path: &Path) -> Result<EvalResults, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
    parse_eval(path, &text)
}

pub fn parse_eval(path: &Path, text: &str) -> Result<EvalResults, ReportError> {
    let root: Value = serde_json::from_str(text).map_err(|e| {
        ReportError::malformed(path, e.line().max(1), format!("not valid JSON ({e})"))
    })?;
    let Value::Object(root) = root else {
        return Err(ReportError::malformed(
            path,
            1,
            format!("expected a JSON object, found {}", kind_of(&root)),
        ));
    };
    let mut models: Vec<(String, &Map<String, Value>)> = Vec::new();
    match root.get("models") {
        Some(Value::Array(list)) => {
            for (i, m) in list.iter().enumerate() {
                if let Value::Object(m) = m {
                    let name =
                        first_str(m, &NAME_KEYS).unwrap_or_else(|| format!("model {}", i + 1));
                    models.push((name, m));
                }
            }
        }
        Some(Value::Object(map)) => {
            for (name, m) in map {
                if let Value::Object(m) = m {
                    models.push((name.clone(), m));
                }
            }
        }
        _ => {
            for (name, m) in &root {
                if let (false, Value::Object(m)) = (NOT_MODELS.contains(&name.as_str()), m) {
                    models.push((name.clone(), m));
                }
            }
        }
    }

    let mut out = EvalResults::default();
    if let Some(Value::Array(list)) = root.get("samples") {
        for s in list.iter().filter_map(Value::as_object) {
            take_sample(&mut out.samples, s, None);
        }
    }
    for (name, m) in models {
        out.models.push(model_figures(&name, m));
        for key in RESPONSE_LIST_KEYS {
            if let Some(Value::Array(list)) = m.get(key) {
                for s in list.iter().filter_map(Value::as_object) {
                    take_sample(&mut out.samples, s, Some(&name));
                }
            }
        }
    }
    Ok(out)
}

fn model_figures(name: &str, m: &Map<String, Value>) -> ModelEval {
    let mut model = ModelEval {
        name: name.to_string(),
        figures: Vec::new(),
        tasks: Vec::new(),
    };
    for (k, v) in m {
        match v {
            Value::Number(n) => push_figure(
                &mut model.figures,
                canonical(k, false),
                n.as_f64().unwrap_or(f64::NAN),
            ),
            Value::Object(inner) if TASK_KEYS.contains(&k.as_str()) => {
                for (task, tv) in inner {
                    let figures = match tv {
                        Value::Object(f) => task_numbers(f),
                        Value::Number(n) => {
                            vec![(JUDGE_SCORE.into(), n.as_f64().unwrap_or(f64::NAN))]
                        }
                        _ => continue,
                    };
                    model.tasks.push((task.clone(), figures));
                }
            }
            Value::Array(list) if TASK_KEYS.contains(&k.as_str()) => {
                for entry in list.iter().filter_map(Value::as_object) {
                    if let Some(task) =
                        first_str(entry, &TASK_NAME_KEYS).or_else(|| first_str(entry, &["name"]))
                    {
                        model.tasks.push((task, task_numbers(entry)));
                    }
                }
            }
            Value::Object(inner) => {
                for (ik, iv) in inner {
                    if let Some(x) = iv.as_f64() {
                        push_figure(&mut model.figures, format!("{k}.{ik}"), x);
                    }
                }
            }
            _ => {}
        }
    }
    model
}

fn task_numbers(m: &Map<String, Value>) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (k, v) in m {
        if let Some(x) = v.as_f64() {
            push_figure(&mut out, canonical(k, true), x);
        }
    }
    out
}

/// One name for the mean judge score, whatever the file calls it.
fn canonical(name: &str, task_level: bool) -> String {
    if SCORE_ALIASES.contains(&name) || (task_level && name == "mean") {
        JUDGE_SCORE.into()
    } else {
        name.into()
    }
}

/// First value of a name wins (`judge_score` over a later `score`).
fn push_figure(figures: &mut Vec<(String, f64)>, name: String, value: f64) {
    if !figures.iter().any(|f| f.0 == name) {
        figures.push((name, value));
    }
}

/// Adds a sample to the row of its prompt (rows keep first-seen order).
fn take_sample(rows: &mut Vec<SampleRow>, s: &Map<String, Value>, model: Option<&str>) {
    // `task` is a kind name, or kiln-eval's Task {prompt, spec: {kind, ..}}.
    let task_obj = s.get("task").and_then(Value::as_object);
    let Some(prompt) =
        first_str(s, &["prompt"]).or_else(|| task_obj.and_then(|t| first_str(t, &["prompt"])))
    else {
        return;
    };
    let task = first_str(s, &TASK_NAME_KEYS).or_else(|| {
        let t = task_obj?;
        first_str(t, &TASK_NAME_KEYS).or_else(|| first_str(t.get("spec")?.as_object()?, &["kind"]))
    });
    let mut responses = Vec::new();
    match s.get("responses") {
        Some(Value::Object(map)) => {
            responses.extend(map.iter().filter_map(|(m, r)| response(m, r)));
        }
        Some(Value::Array(list)) => {
            for r in list {
                if let Some(m) = r.as_object().and_then(|o| first_str(o, &NAME_KEYS)) {
                    responses.extend(response(&m, r));
                }
            }
        }
        _ => {
            let m = model
                .map(str::to_string)
                .or_else(|| first_str(s, &NAME_KEYS));
            if let Some(m) = m {
                responses.extend(response(&m, &Value::Object(s.clone())));
            }
        }
    }
    let index = match rows.iter().position(|r| r.prompt == prompt) {
        Some(i) => i,
        None => {
            rows.push(SampleRow {
                prompt,
                task: None,
                responses: Vec::new(),
            });
            rows.len() - 1
        }
    };
    let row = &mut rows[index];
    if row.task.is_none() {
        row.task = task;
    }
    for r in responses {
        if !row.responses.iter().any(|x| x.model == r.model) {
            row.responses.push(r);
        }
    }
}

fn response(model: &str, v: &Value) -> Option<Response> {
    match v {
        Value::String(text) => Some(Response {
            model: model.to_string(),
            text: text.clone(),
            score: None,
            reason: None,
        }),
        Value::Object(o) => Some(Response {
            model: model.to_string(),
            text: first_str(o, &TEXT_KEYS)?,
            score: SCORE_KEYS
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_f64)),
            reason: first_str(o, &["reason"]),
        }),
        _ => None,
    }
}

fn first_str(m: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| m.get(*k).and_then(Value::as_str).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EvalResults, ReportError> {
        parse_eval(Path::new("run/eval/results.json"), text)
    }

    #[test]
    fn kiln_eval_evaluations_keyed_by_model() {
        let r = parse(
            r#"{"models": {
                "sft": {"mean_score": 0.4, "win_rate": 0.55, "ended_rate": 0.9,
                        "per_kind": [{"kind": "arithmetic", "mean": 0.3, "n": 10},
                                     {"kind": "words", "mean": 0.5, "n": 10}],
                        "responses": [{"task": {"prompt": "What is 2 + 3?", "spec": {"kind": "arithmetic", "a": 2, "b": 3}},
                                       "prompt_ids": [1, 2], "ids": [3], "text": "5", "ended": true,
                                       "score": 1.0, "reason": "correct"}]},
                "dpo": {"mean_score": 0.6,
                        "responses": [{"task": {"prompt": "What is 2 + 3?", "spec": {"kind": "arithmetic", "a": 2, "b": 3}},
                                       "text": "6", "score": 0.0, "reason": "wrong sum"}]}}}"#,
        )
        .unwrap();
        let sft = r.models.iter().find(|m| m.name == "sft").unwrap();
        assert_eq!(sft.figure(JUDGE_SCORE), Some(0.4));
        assert_eq!(sft.figure("win_rate"), Some(0.55));
        assert_eq!(
            sft.tasks[0],
            (
                "arithmetic".into(),
                vec![(JUDGE_SCORE.into(), 0.3), ("n".into(), 10.0)]
            )
        );
        assert_eq!(r.samples.len(), 1, "one row per prompt");
        let row = &r.samples[0];
        assert_eq!(row.prompt, "What is 2 + 3?");
        assert_eq!(row.task.as_deref(), Some("arithmetic"));
        assert_eq!(row.responses.len(), 2);
        let dpo = row.responses.iter().find(|x| x.model == "dpo").unwrap();
        assert_eq!((dpo.text.as_str(), dpo.score), ("6", Some(0.0)));
        assert_eq!(dpo.reason.as_deref(), Some("wrong sum"));
    }

    #[test]
    fn models_as_a_list_with_tasks_object_and_samples() {
        let r = parse(
            r#"{"models": [
                {"name": "sft", "judge_score": 0.4, "win_rate": 0.5, "notes": "x",
                 "by_task": {"arithmetic": {"judge_score": 0.3}, "sentiment": 0.7},
                 "samples": [{"prompt": "2+2?", "task": "arithmetic", "response": "4", "score": 1}]},
                {"name": "dpo", "score": 0.6,
                 "samples": [{"prompt": "2+2?", "response": "5", "score": 0}]}
            ]}"#,
        )
        .unwrap();
        let names: Vec<&str> = r.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["sft", "dpo"]);
        assert_eq!(r.models[1].figure(JUDGE_SCORE), Some(0.6));
        assert_eq!(
            r.models[0].tasks[1],
            ("sentiment".into(), vec![(JUDGE_SCORE.into(), 0.7)])
        );
        let row = &r.samples[0];
        let models: Vec<&str> = row.responses.iter().map(|x| x.model.as_str()).collect();
        assert_eq!(models, ["sft", "dpo"]);
        assert_eq!(row.responses[1].score, Some(0.0));
    }

    #[test]
    fn top_level_samples_with_responses_by_model() {
        let r = parse(
            r#"{"models": {"pretrain": {"judge_score": 0.1}, "ppo": {"judge_score": 0.7}},
                "samples": [{"prompt": "Say hi", "kind": "format",
                             "responses": {"pretrain": "hi hi", "ppo": {"text": "Hi!", "reward": 0.9}}},
                            {"prompt": "Mood?", "responses": [{"model": "ppo", "completion": "happy"}]}]}"#,
        )
        .unwrap();
        let score = |m: &str| {
            let row = &r.samples[0];
            row.responses.iter().find(|x| x.model == m).unwrap().score
        };
        assert_eq!(score("ppo"), Some(0.9));
        assert_eq!(score("pretrain"), None);
        assert_eq!(r.samples[0].task.as_deref(), Some("format"));
        assert_eq!(r.samples[1].responses[0].text, "happy");
    }

    #[test]
    fn no_models_key_means_each_top_level_object_is_a_model() {
        let r =
            parse(r#"{"sft": {"judge_score": 0.2}, "version": 1, "meta": {"seed": 1}}"#).unwrap();
        assert_eq!(r.models.len(), 1);
        assert_eq!(r.models[0].name, "sft");
    }

    #[test]
    fn broken_json_names_the_line() {
        let msg = parse("{\n\"models\": [\n  {\"name\": }\n]}")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("run/eval/results.json:3: not valid JSON"),
            "{msg}"
        );
        let msg = parse("[1]").unwrap_err().to_string();
        assert_eq!(
            msg,
            "run/eval/results.json:1: expected a JSON object, found an array"
        );
    }
}
