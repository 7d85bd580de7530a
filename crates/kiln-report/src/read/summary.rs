//! `RUN/summary.json`: the pipeline's headline figures per stage (written
//! at its end) and the pretrained model's sample continuations.

use std::path::Path;

use serde_json::{Map, Value};

use super::eval::{Response, SampleRow};
use super::metrics::kind_of;
use crate::html::fmt_num;
use crate::ReportError;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// (stage, [(figure, formatted value)]); top-level scalars under "run".
    pub sections: Vec<(String, Vec<(String, String)>)>,
    /// `samples`: prompts and the pretrained model's continuations.
    pub samples: Vec<SampleRow>,
    /// The whole file, for the headline figures read by name.
    pub raw: Map<String, Value>,
}

impl Summary {
    /// The number at `path` ("reward", "eval", "accuracy"), if there is one.
    pub fn number(&self, path: &[&str]) -> Option<f64> {
        let (first, rest) = path.split_first()?;
        let mut v = self.raw.get(*first)?;
        for key in rest {
            v = v.get(key)?;
        }
        v.as_f64()
    }
}

pub fn read_summary(path: &Path) -> Result<Summary, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
    parse_summary(path, &text)
}

pub fn parse_summary(path: &Path, text: &str) -> Result<Summary, ReportError> {
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
    let mut summary = Summary {
        raw: root.clone(),
        ..Summary::default()
    };
    let mut run_rows = Vec::new();
    for (key, value) in &root {
        match value {
            Value::Object(_) => {
                let mut rows = Vec::new();
                flatten("", value, &mut rows);
                summary.sections.push((key.clone(), rows));
            }
            Value::Array(list) if key == "samples" => {
                for s in list {
                    if let Some(row) = sample(s) {
                        summary.samples.push(row);
                    }
                }
            }
            Value::Array(_) => {}
            scalar => run_rows.push((key.clone(), scalar_text(scalar))),
        }
    }
    if !run_rows.is_empty() {
        summary.sections.push(("run".into(), run_rows));
    }
    Ok(summary)
}

/// A stage's own `STAGE/summary.json` (as `kiln sft`/`dpo`/... write it):
/// every scalar, nested names dotted.
pub fn read_stage_summary(path: &Path) -> Result<Vec<(String, String)>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
    let root: Value = serde_json::from_str(&text).map_err(|e| {
        ReportError::malformed(path, e.line().max(1), format!("not valid JSON ({e})"))
    })?;
    if !root.is_object() {
        return Err(ReportError::malformed(
            path,
            1,
            format!("expected a JSON object, found {}", kind_of(&root)),
        ));
    }
    let mut rows = Vec::new();
    flatten("", &root, &mut rows);
    Ok(rows)
}

/// Nested objects become dotted names ("removed_docs_by_filter.lang").
fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, inner) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, inner, rows);
            }
        }
        Value::Array(_) => {}
        scalar => rows.push((prefix.to_string(), scalar_text(scalar))),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), fmt_num),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "—".into(),
        _ => String::new(),
    }
}

fn sample(v: &Value) -> Option<SampleRow> {
    let prompt = v.get("prompt")?.as_str()?.to_string();
    let text = ["completion", "text", "response"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))?
        .to_string();
    Some(SampleRow {
        prompt,
        task: None,
        responses: vec![Response {
            model: "pretrain".into(),
            text,
            score: None,
            reason: None,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_become_sections_and_samples_rows() {
        let s = parse_summary(
            Path::new("summary.json"),
            r#"{"curate": {"kept_docs": 10, "removed_docs_by_filter": {"lang": 3}},
                "pretrain": {"model": "tiny", "final_train_loss": 3.24159, "checkpoint": null},
                "samples": [{"prompt": "In the beginning", "completion": " was"}],
                "wall_s": 61.5}"#,
        )
        .unwrap();
        let curate = &s.sections.iter().find(|x| x.0 == "curate").unwrap().1;
        assert!(curate.contains(&("removed_docs_by_filter.lang".into(), "3".into())));
        let pre = &s.sections.iter().find(|x| x.0 == "pretrain").unwrap().1;
        assert!(pre.contains(&("final_train_loss".into(), "3.242".into())));
        assert!(pre.contains(&("checkpoint".into(), "—".into())));
        assert_eq!(s.sections.last().unwrap().0, "run");
        assert_eq!(s.samples.len(), 1);
        assert_eq!(s.samples[0].responses[0].text, " was");
        assert_eq!(s.number(&["pretrain", "final_train_loss"]), Some(3.24159));
        assert_eq!(
            s.number(&["curate", "removed_docs_by_filter", "lang"]),
            Some(3.0)
        );
        assert_eq!(s.number(&["pretrain", "model"]), None);
        assert_eq!(s.number(&["nope"]), None);
    }

    #[test]
    fn malformed_summary_names_file_and_line() {
        let msg = parse_summary(Path::new("run/summary.json"), "{\n\"a\": 1,\n}")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("run/summary.json:3: not valid JSON"),
            "{msg}"
        );
    }
}
