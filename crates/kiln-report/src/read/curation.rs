//! The curation funnel: documents and bytes in, removed by each filter,
//! kept. Read from `RUN/curated/stats.json` (kiln-data's totals, with bytes
//! per filter) when the run has it, else from summary.json's `curate`
//! section (documents per filter only).

use std::path::Path;

use serde_json::Value;

use super::metrics::kind_of;
use super::Summary;
use crate::ReportError;

/// Where `kiln pipeline` puts kiln-data's totals.
pub const STATS_FILE: &str = "curated/stats.json";

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Funnel {
    pub input_docs: f64,
    /// None when the source does not say.
    pub input_bytes: Option<f64>,
    /// (filter, documents removed, bytes removed), most documents first.
    pub removed: Vec<(String, f64, Option<f64>)>,
    /// Bytes of lines cut out of documents that were kept.
    pub line_bytes_removed: Option<f64>,
    pub kept_docs: f64,
    pub kept_bytes: Option<f64>,
}

/// The funnel of a run: stats.json first, then summary.json; None when
/// neither has the totals.
pub fn read_funnel(dir: &Path, summary: Option<&Summary>) -> Result<Option<Funnel>, ReportError> {
    let path = dir.join(STATS_FILE);
    if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| ReportError::io(&path, e))?;
        let root: Value = serde_json::from_str(&text).map_err(|e| {
            ReportError::malformed(&path, e.line().max(1), format!("not valid JSON ({e})"))
        })?;
        if !root.is_object() {
            return Err(ReportError::malformed(
                &path,
                1,
                format!("expected a JSON object, found {}", kind_of(&root)),
            ));
        }
        if let Some(f) = from_stats(&root) {
            return Ok(Some(f));
        }
    }
    Ok(summary
        .and_then(|s| s.raw.get("curate"))
        .and_then(from_summary))
}

/// kiln-data's `Stats`: totals plus `filters: {name: {docs_removed,
/// bytes_removed, line_bytes_removed, ..}}`.
fn from_stats(root: &Value) -> Option<Funnel> {
    let num = |k: &str| root.get(k).and_then(Value::as_f64);
    let mut funnel = Funnel {
        input_docs: num("input_docs")?,
        input_bytes: num("input_bytes"),
        kept_docs: num("kept_docs")?,
        kept_bytes: num("kept_bytes"),
        ..Funnel::default()
    };
    let mut line_bytes = 0.0;
    if let Some(filters) = root.get("filters").and_then(Value::as_object) {
        for (name, f) in filters {
            let get = |k: &str| f.get(k).and_then(Value::as_f64);
            line_bytes += get("line_bytes_removed").unwrap_or(0.0);
            let docs = get("docs_removed").unwrap_or(0.0);
            if docs > 0.0 {
                funnel
                    .removed
                    .push((name.clone(), docs, get("bytes_removed")));
            }
        }
    }
    funnel.line_bytes_removed = (line_bytes > 0.0).then_some(line_bytes);
    sort_removed(&mut funnel);
    Some(funnel)
}

/// The pipeline's summary: `{input_docs, input_bytes, kept_docs,
/// kept_bytes, removed_docs_by_filter: {name: docs}}`.
fn from_summary(curate: &Value) -> Option<Funnel> {
    let num = |k: &str| curate.get(k).and_then(Value::as_f64);
    let mut funnel = Funnel {
        input_docs: num("input_docs")?,
        input_bytes: num("input_bytes"),
        kept_docs: num("kept_docs")?,
        kept_bytes: num("kept_bytes"),
        ..Funnel::default()
    };
    if let Some(by) = curate
        .get("removed_docs_by_filter")
        .and_then(Value::as_object)
    {
        for (name, docs) in by {
            if let Some(d) = docs.as_f64().filter(|d| *d > 0.0) {
                funnel.removed.push((name.clone(), d, None));
            }
        }
    }
    sort_removed(&mut funnel);
    Some(funnel)
}

fn sort_removed(f: &mut Funnel) {
    f.removed
        .sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::summary::parse_summary;

    #[test]
    fn stats_json_gives_bytes_per_filter_most_documents_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("curated")).unwrap();
        std::fs::write(
            dir.path().join(STATS_FILE),
            r#"{"input_docs": 100, "input_bytes": 5000, "kept_docs": 80, "kept_bytes": 3900,
                "filters": {"dedup": {"docs_removed": 5, "bytes_removed": 300, "line_bytes_removed": 0},
                            "lang": {"docs_removed": 15, "bytes_removed": 700, "line_bytes_removed": 0},
                            "lines": {"docs_removed": 0, "bytes_removed": 0, "line_bytes_removed": 100}}}"#,
        )
        .unwrap();
        let f = read_funnel(dir.path(), None).unwrap().unwrap();
        assert_eq!(f.input_docs, 100.0);
        assert_eq!(f.kept_bytes, Some(3900.0));
        assert_eq!(
            f.removed,
            vec![
                ("lang".to_string(), 15.0, Some(700.0)),
                ("dedup".to_string(), 5.0, Some(300.0))
            ]
        );
        assert_eq!(f.line_bytes_removed, Some(100.0));
    }

    #[test]
    fn summary_json_is_the_fallback_and_a_broken_stats_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let summary = parse_summary(
            Path::new("summary.json"),
            r#"{"curate": {"input_docs": 10, "kept_docs": 7, "removed_docs_by_filter": {"a": 1, "b": 2, "c": 0}}}"#,
        )
        .unwrap();
        let f = read_funnel(dir.path(), Some(&summary)).unwrap().unwrap();
        assert_eq!(
            (f.input_docs, f.kept_docs, f.input_bytes),
            (10.0, 7.0, None)
        );
        let names: Vec<&str> = f.removed.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert!(read_funnel(dir.path(), None).unwrap().is_none());

        std::fs::create_dir_all(dir.path().join("curated")).unwrap();
        std::fs::write(dir.path().join(STATS_FILE), "{\n\"input_docs\": }").unwrap();
        let msg = read_funnel(dir.path(), None).unwrap_err().to_string();
        assert!(
            msg.contains("curated/stats.json:2: not valid JSON"),
            "{msg}"
        );
    }
}
