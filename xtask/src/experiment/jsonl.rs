//! The few file formats the experiment reads and writes: curate's
//! `kept/*.jsonl.zst`, plain JSONL, `metrics.jsonl` and JSON summaries.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One document: id and text.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub id: String,
    pub text: String,
}

/// The documents of every `*.jsonl.zst` file in `dir`, in file-name order
/// (curate writes one single-frame shard per input file).
pub fn read_kept(dir: &Path) -> Result<Vec<Doc>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.zst"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let file = std::fs::File::open(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let mut text = String::new();
        ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(file))
            .map_err(|e| format!("{}: not zstd: {e}", f.display()))?
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        for (n, line) in text.lines().enumerate() {
            docs.push(parse_doc(line).map_err(|e| format!("{}:{}: {e}", f.display(), n + 1))?);
        }
    }
    Ok(docs)
}

fn parse_doc(line: &str) -> Result<Doc, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let text = v["text"].as_str().ok_or("no string \"text\"")?.to_string();
    let id = match &v["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(Doc { id, text })
}

/// Writes `{"id", "text"}` lines.
pub fn write_docs(path: &Path, docs: &[&Doc]) -> Result<(), String> {
    let mut out = String::new();
    for d in docs {
        out += &serde_json::json!({"id": d.id, "text": d.text}).to_string();
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `(step, loss)` of every step in a `kiln pretrain` metrics.jsonl whose
/// loss is finite.
pub fn read_train_losses(path: &Path) -> Result<Vec<(u64, f64)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        if let (Some(step), Some(loss)) = (v["step"].as_u64(), v["loss"].as_f64()) {
            out.push((step, loss));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_may_be_numbers_and_text_is_required() {
        let d = parse_doc(r#"{"id": 7, "text": "a\nb", "x": 1}"#).unwrap();
        assert_eq!((d.id.as_str(), d.text.as_str()), ("7", "a\nb"));
        assert!(parse_doc(r#"{"id": "a"}"#).unwrap_err().contains("text"));
    }
}
