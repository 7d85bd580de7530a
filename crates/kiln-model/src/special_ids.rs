//! The special-token ids a Hugging Face model directory declares:
//! `bos_token_id`, `eos_token_id` (one id or a list) and `pad_token_id` in
//! `config.json` and `generation_config.json`. transformers' `generate`
//! stops at any eos id and pads with the pad id; sequence classifiers pool
//! the last token that is not the pad id. kiln writes the real ids of its
//! tokenizer and refuses, on reading, ids outside the vocabulary (GPT-2's
//! default 50256 in a 4,096-token model stops nothing and warns in
//! transformers).

use std::path::Path;

use serde_json::{Map, Value};

use crate::ModelError;

pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// Special-token ids of a model directory; `None` / empty where unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokenIds {
    pub bos: Option<u32>,
    /// Generation stops at any of these. The first is the model's own
    /// (config.json's `eos_token_id`); generation_config.json lists all.
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
}

impl SpecialTokenIds {
    /// `config.json`'s keys: one eos id (the first), as GPT-2 configs have.
    pub fn config_entries(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("bos_token_id".into(), opt(self.bos));
        m.insert("eos_token_id".into(), opt(self.eos.first().copied()));
        m.insert("pad_token_id".into(), opt(self.pad));
        m
    }

    /// `generation_config.json`: every eos id, so `generate` stops at the
    /// end of a turn as well as at the end of a text.
    pub fn generation_config(&self) -> Value {
        let eos = match self.eos.as_slice() {
            [] => Value::Null,
            [one] => Value::from(*one),
            many => Value::from(many.to_vec()),
        };
        serde_json::json!({
            "_from_model_config": false,
            "bos_token_id": opt(self.bos),
            "eos_token_id": eos,
            "pad_token_id": opt(self.pad),
            "do_sample": false,
        })
    }

    /// Reads the ids of `dir/config.json` and, where present,
    /// `dir/generation_config.json` (whose eos list wins: it is what
    /// `generate` uses). Any id `>= vocab_size` is an error naming the file
    /// and the key.
    pub fn read(dir: &Path, vocab_size: usize) -> Result<SpecialTokenIds, ModelError> {
        let config = dir.join(crate::checkpoint::CONFIG_FILE);
        let mut ids = read_file(&config, vocab_size)?;
        let generation = dir.join(GENERATION_CONFIG_FILE);
        if generation.is_file() {
            let g = read_file(&generation, vocab_size)?;
            ids.bos = g.bos.or(ids.bos);
            ids.pad = g.pad.or(ids.pad);
            // generate's list first; config.json's eos (the end of a text)
            // stays a stop id too.
            let mut eos = g.eos;
            for id in ids.eos {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
            ids.eos = eos;
        }
        Ok(ids)
    }
}

fn opt(id: Option<u32>) -> Value {
    id.map_or(Value::Null, Value::from)
}

fn read_file(path: &Path, vocab_size: usize) -> Result<SpecialTokenIds, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))?;
    let one = |key: &str, x: &Value| -> Result<u32, ModelError> {
        let id = x.as_u64().ok_or_else(|| {
            ModelError::format(
                path,
                format!("\"{key}\" must be a token id (a non-negative integer), got {x}"),
            )
        })?;
        if id >= vocab_size as u64 {
            return Err(ModelError::format(
                path,
                format!(
                    "\"{key}\" is {id}, outside the vocabulary of {vocab_size} tokens; set it to \
                     the id of the matching special token in tokenizer.json (or null)"
                ),
            ));
        }
        Ok(id as u32)
    };
    let single = |key: &str| -> Result<Option<u32>, ModelError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => one(key, x).map(Some),
        }
    };
    let eos = match v.get("eos_token_id") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(xs)) => xs
            .iter()
            .map(|x| one("eos_token_id", x))
            .collect::<Result<_, _>>()?,
        Some(x) => vec![one("eos_token_id", x)?],
    };
    Ok(SpecialTokenIds {
        bos: single("bos_token_id")?,
        eos,
        pad: single("pad_token_id")?,
    })
}
