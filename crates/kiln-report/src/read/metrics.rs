//! `STAGE/metrics.jsonl`: one JSON object per logged step. Every numeric
//! field becomes a column, so a stage that logs new figures shows them
//! without a change here.

use std::path::Path;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::ReportError;

/// The metric columns of one stage, in the order they first appear.
#[derive(Debug, Clone, PartialEq)]
pub struct StageMetrics {
    pub stage: String,
    pub records: usize,
    pub columns: Vec<Column>,
    /// Things the reader tolerated and the report should say.
    pub notes: Vec<String>,
}

/// One metric: (step, value) points; `null` reads as NaN (a gap).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl StageMetrics {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The largest step logged.
    pub fn last_step(&self) -> Option<f64> {
        self.columns
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.0))
            .reduce(f64::max)
    }
}

impl Column {
    pub fn finite(&self) -> impl Iterator<Item = f64> + '_ {
        self.points.iter().map(|p| p.1).filter(|v| v.is_finite())
    }
    pub fn last_finite(&self) -> Option<f64> {
        self.finite().last()
    }
    pub fn first_finite(&self) -> Option<f64> {
        self.finite().next()
    }
}

/// Fields that are not metrics of the step.
const NOT_METRICS: [&str; 2] = ["step", "split"];

pub fn read_metrics(stage: &str, path: &Path) -> Result<StageMetrics, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
    parse_metrics(stage, path, &text)
}

pub fn parse_metrics(stage: &str, path: &Path, text: &str) -> Result<StageMetrics, ReportError> {
    let mut metrics = StageMetrics {
        stage: stage.to_string(),
        records: 0,
        columns: Vec::new(),
        notes: Vec::new(),
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let complete_last = text.ends_with('\n');
    for (i, line) in lines.iter().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Line = match serde_json::from_str(line) {
            Ok(v) => v,
            // A run being written (or killed mid-write) leaves a last line
            // without its newline: that is not corruption, just not there yet.
            Err(_) if i == lines.len() - 1 && !complete_last => {
                metrics.notes.push(format!(
                    "{}:{line_no}: last line incomplete (run still writing, or killed mid-write); ignored",
                    path.display()
                ));
                continue;
            }
            Err(e) => {
                return Err(ReportError::malformed(
                    path,
                    line_no,
                    format!("not valid JSON ({e}); each line must be one JSON object"),
                ))
            }
        };
        let fields = match value {
            Line::Object(fields) => fields,
            Line::Other(kind) => {
                return Err(ReportError::malformed(
                    path,
                    line_no,
                    format!("expected a JSON object per line, found {kind}"),
                ))
            }
        };
        metrics.records += 1;
        let step = match fields.iter().find(|f| f.0 == "step").map(|f| &f.1) {
            None => metrics.records as f64,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Some(other) => {
                return Err(ReportError::malformed(
                    path,
                    line_no,
                    format!("field `step` must be a number, found {}", kind_of(other)),
                ))
            }
        };
        // Held-out evaluations log the same names as training steps
        // (`"split": "eval"`): they become `eval_loss` etc., plotted beside
        // the training curve.
        let prefix = match fields.iter().find(|f| f.0 == "split").map(|f| &f.1) {
            Some(Value::String(split)) if split != "train" => format!("{split}_"),
            _ => String::new(),
        };
        // In file order: the order a stage logs its figures is the order its
        // legends and tables show them.
        for (name, v) in &fields {
            if NOT_METRICS.contains(&name.as_str()) {
                continue;
            }
            push_value(&mut metrics.columns, &format!("{prefix}{name}"), step, v);
        }
    }
    Ok(metrics)
}

/// Numbers (and `null`, a non-finite value) become points; a nested object
/// of numbers becomes `outer.inner` columns; text and flags are skipped.
fn push_value(columns: &mut Vec<Column>, name: &str, step: f64, v: &Value) {
    let value = match v {
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::Null => f64::NAN,
        Value::Object(inner) => {
            for (k, iv) in inner {
                if !matches!(iv, Value::Object(_)) {
                    push_value(columns, &format!("{name}.{k}"), step, iv);
                }
            }
            return;
        }
        _ => return,
    };
    let index = match columns.iter().position(|c| c.name == name) {
        Some(i) => i,
        None => {
            columns.push(Column {
                name: name.to_string(),
                points: Vec::new(),
            });
            columns.len() - 1
        }
    };
    columns[index].points.push((step, value));
}

/// One line of the file: an object with its fields in file order
/// (serde_json's map would sort them), or what else it was.
enum Line {
    Object(Vec<(String, Value)>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LineVisitor)
    }
}

struct LineVisitor;

impl<'de> Visitor<'de> for LineVisitor {
    type Value = Line;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line, A::Error> {
        let mut fields = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            fields.push((k, v));
        }
        Ok(Line::Object(fields))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Line, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Line::Other("an array"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Line, E> {
        Ok(Line::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Line, E> {
        Ok(Line::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Line, E> {
        Ok(Line::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Line, E> {
        Ok(Line::Other("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Line, E> {
        Ok(Line::Other("a string"))
    }
    fn visit_unit<E>(self) -> Result<Line, E> {
        Ok(Line::Other("null"))
    }
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StageMetrics, ReportError> {
        parse_metrics("pretrain", Path::new("run/pretrain/metrics.jsonl"), text)
    }

    #[test]
    fn columns_in_first_seen_order_with_gaps_for_null() {
        let m = parse(
            "{\"step\":1,\"loss\":10.5,\"lr\":0.001,\"grad_norm\":3.0,\"tokens_per_s\":1200.0}\n\
             {\"step\":2,\"loss\":null,\"lr\":0.001,\"grad_norm\":null,\"tokens_per_s\":1300.0,\"skipped\":true}\n\
             \n\
             {\"step\":3,\"loss\":9.0,\"lr\":0.002,\"grad_norm\":2.0,\"tokens_per_s\":1250.0,\"val_loss\":9.5}\n",
        )
        .unwrap();
        assert_eq!(m.records, 3);
        let names: Vec<&str> = m.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["loss", "lr", "grad_norm", "tokens_per_s", "val_loss"]
        );
        let loss = m.column("loss").unwrap();
        assert_eq!(loss.points.len(), 3);
        assert!(loss.points[1].1.is_nan());
        assert_eq!(loss.last_finite(), Some(9.0));
        assert_eq!(m.column("val_loss").unwrap().points, vec![(3.0, 9.5)]);
        assert_eq!(m.last_step(), Some(3.0));
        assert!(m.notes.is_empty());
    }

    #[test]
    fn nested_numbers_become_dotted_columns_and_missing_step_counts_records() {
        let m = parse("{\"rewards\":{\"chosen\":1.0,\"rejected\":-1.0},\"note\":\"x\"}\n{\"rewards\":{\"chosen\":2.0}}\n").unwrap();
        assert_eq!(
            m.column("rewards.chosen").unwrap().points,
            vec![(1.0, 1.0), (2.0, 2.0)]
        );
        assert_eq!(m.column("rewards.rejected").unwrap().points.len(), 1);
        assert!(m.column("note").is_none());
    }

    #[test]
    fn malformed_line_is_an_error_naming_file_and_line() {
        let err =
            parse("{\"step\":1,\"loss\":2.0}\n{\"step\":2,\"loss\":\n{\"step\":3}\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("run/pretrain/metrics.jsonl:2: not valid JSON"),
            "{msg}"
        );
    }

    #[test]
    fn a_line_that_is_not_an_object_or_a_bad_step_is_an_error() {
        let msg = parse("{\"step\":1}\n[1,2]\n").unwrap_err().to_string();
        assert_eq!(
            msg,
            "run/pretrain/metrics.jsonl:2: expected a JSON object per line, found an array"
        );
        let msg = parse("{\"step\":\"one\"}\n").unwrap_err().to_string();
        assert_eq!(
            msg,
            "run/pretrain/metrics.jsonl:1: field `step` must be a number, found a string"
        );
    }

    #[test]
    fn eval_split_records_become_eval_columns() {
        let m = parse(
            "{\"step\":0,\"split\":\"eval\",\"loss\":3.0}\n\
             {\"step\":1,\"split\":\"train\",\"loss\":2.9,\"lr\":1e-4}\n\
             {\"step\":2,\"split\":\"train\",\"loss\":2.7,\"lr\":1e-4}\n\
             {\"step\":2,\"split\":\"eval\",\"loss\":2.8}\n",
        )
        .unwrap();
        let names: Vec<&str> = m.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["eval_loss", "loss", "lr"]);
        assert_eq!(
            m.column("eval_loss").unwrap().points,
            vec![(0.0, 3.0), (2.0, 2.8)]
        );
        assert_eq!(
            m.column("loss").unwrap().points,
            vec![(1.0, 2.9), (2.0, 2.7)]
        );
    }

    #[test]
    fn an_unfinished_last_line_is_tolerated_with_a_note() {
        let m = parse("{\"step\":1,\"loss\":2.0}\n{\"step\":2,\"lo").unwrap();
        assert_eq!(m.records, 1);
        assert_eq!(m.notes.len(), 1);
        assert!(m.notes[0].contains("metrics.jsonl:2: last line incomplete"));
    }
}
