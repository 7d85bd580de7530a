//! The unit of curation: one document with its id, text, metadata and origin.

use serde_json::{Map, Value};

/// Where a document came from: the input file and its 1-based line (or
/// record) number, so every rejection can be traced back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: u64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A document. `meta` holds every JSON field other than `text` and `id`
/// (kept verbatim in the output).
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub meta: Map<String, Value>,
    pub origin: Origin,
}

impl Document {
    /// The JSONL output form: `{"id", "text", ...meta}`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::with_capacity(self.meta.len() + 2);
        m.insert("id".into(), Value::String(self.id.clone()));
        m.insert("text".into(), Value::String(self.text.clone()));
        for (k, v) in &self.meta {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}
