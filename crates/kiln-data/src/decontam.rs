//! Benchmark decontamination (GPT-3's method, as in lm-evaluation-harness's
//! Janitor): text is lowercased, ASCII punctuation deleted, split on
//! whitespace; a training document sharing any `n`-gram (13 by default)
//! with an evaluation record is removed, and the match is reported.

use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecontamConfig {
    pub enabled: bool,
    /// JSONL files of evaluation records; every string field other than
    /// `id`/`source` is evaluation text.
    pub eval: Vec<PathBuf>,
    pub n: usize,
}

impl Default for DecontamConfig {
    fn default() -> Self {
        DecontamConfig {
            enabled: true,
            eval: Vec::new(),
            n: 13,
        }
    }
}

/// Lowercase, ASCII punctuation deleted, whitespace split (Janitor's rule).
pub fn normalized_words(text: &str) -> Vec<String> {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .flat_map(char::to_lowercase)
        .collect();
    clean.split_whitespace().map(str::to_string).collect()
}

fn ngram_hash(words: &[String]) -> u64 {
    let mut buf = String::new();
    for w in words {
        buf.push_str(w);
        buf.push(' ');
    }
    xxh3_64(buf.as_bytes())
}

/// A contamination hit: which eval record, and the first shared n-gram.
#[derive(Clone, Debug, PartialEq)]
pub struct Contamination {
    pub eval_id: String,
    pub ngram: String,
    pub matches: usize,
}

#[derive(Default)]
pub struct Decontaminator {
    n: usize,
    index: HashMap<u64, u32>,
    ids: Vec<String>,
}

impl Decontaminator {
    pub fn new(n: usize) -> Self {
        Decontaminator {
            n,
            ..Default::default()
        }
    }

    pub fn add(&mut self, id: &str, text: &str) {
        let words = normalized_words(text);
        let k = self.ids.len() as u32;
        self.ids.push(id.to_string());
        for g in words.windows(self.n) {
            self.index.entry(ngram_hash(g)).or_insert(k);
        }
    }

    /// Reads eval JSONL files (see [`DecontamConfig::eval`]).
    pub fn from_config(cfg: &DecontamConfig) -> io::Result<Self> {
        let mut d = Decontaminator::new(cfg.n);
        for path in &cfg.eval {
            d.add_file(path)?;
        }
        Ok(d)
    }

    pub fn add_file(&mut self, path: &Path) -> io::Result<()> {
        let r = crate::read::open(path)?;
        for (i, line) in r.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", path.display(), i + 1),
                )
            })?;
            let id = v
                .get("id")
                .map(|x| x.as_str().map(String::from).unwrap_or(x.to_string()));
            let id = id.unwrap_or_else(|| format!("{}:{}", path.display(), i + 1));
            if let Value::Object(m) = &v {
                for (k, val) in m {
                    if let (false, Value::String(s)) = (k == "id" || k == "source", val) {
                        self.add(&id, s);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn check(&self, text: &str) -> Option<Contamination> {
        if self.index.is_empty() {
            return None;
        }
        let words = normalized_words(text);
        let mut hit: Option<(u32, usize)> = None;
        let mut matches = 0;
        for (i, g) in words.windows(self.n).enumerate() {
            if let Some(&k) = self.index.get(&ngram_hash(g)) {
                matches += 1;
                hit.get_or_insert((k, i));
            }
        }
        hit.map(|(k, i)| Contamination {
            eval_id: self.ids[k as usize].clone(),
            ngram: words[i..i + self.n].join(" "),
            matches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVAL: &str =
        "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: \
        Rough winds do shake the darling buds of May";

    #[test]
    fn finds_a_13_gram_but_not_a_12_gram() {
        let mut d = Decontaminator::new(13);
        d.add("sonnet-18", EVAL);
        let w: Vec<&str> = EVAL.split_whitespace().collect();
        let with13 = format!(
            "Some blog text. {}! More text.",
            w[3..16].join(" ").to_uppercase()
        );
        let hit = d.check(&with13).expect("13-gram found");
        assert_eq!(hit.eval_id, "sonnet-18");
        assert_eq!(
            hit.ngram,
            "thee to a summers day thou art more lovely and more temperate rough"
        );
        assert_eq!(hit.matches, 1);
        let with12 = format!("Some blog text. {} More text.", w[3..15].join(" "));
        assert_eq!(d.check(&with12), None);
    }

    #[test]
    fn reads_eval_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        std::fs::write(
            &p,
            format!(
                "{}\n",
                serde_json::json!({"id": "q1", "question": EVAL, "source": "x"})
            ),
        )
        .unwrap();
        let d = Decontaminator::from_config(&DecontamConfig {
            eval: vec![p],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d.check(EVAL).unwrap().eval_id, "q1");
    }
}
