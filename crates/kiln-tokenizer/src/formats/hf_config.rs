//! The files transformers reads beside `tokenizer.json`:
//! `tokenizer_config.json` (tokenizer class, special tokens, the Jinja
//! `chat_template`, context length) and `special_tokens_map.json`. With
//! them `AutoTokenizer` knows which token ends a turn and
//! `apply_chat_template` formats a conversation as kiln trained on it.

use serde_json::{json, Map, Value};

use crate::chat::{template_tokens, KILN_CHAT_TEMPLATE};
use crate::{TemplateTokens, Tokenizer};

pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";

/// `special_tokens_map.json` of a kiln chat tokenizer (see
/// [`template_tokens`] for which token is which).
pub fn special_tokens_map(tok: &Tokenizer) -> Value {
    special_tokens_map_of(&template_tokens(tok))
}

/// `special_tokens_map.json` naming `t`'s tokens.
pub fn special_tokens_map_of(t: &TemplateTokens) -> Value {
    let mut m = Map::new();
    for (key, v) in [
        ("bos_token", &t.bos_token),
        ("eos_token", &t.eos_token),
        ("unk_token", &t.unk_token),
        ("pad_token", &t.pad_token),
    ] {
        if let Some(s) = v {
            m.insert(key.into(), s.clone().into());
        }
    }
    if !t.additional_special_tokens.is_empty() {
        m.insert(
            "additional_special_tokens".into(),
            t.additional_special_tokens.clone().into(),
        );
    }
    Value::Object(m)
}

/// `tokenizer_config.json`: a fast tokenizer over tokenizer.json, kiln's
/// chat template when the tokenizer has the chat special tokens, and
/// `model_max_length` (the model's context).
pub fn tokenizer_config(tok: &Tokenizer, model_max_length: usize) -> Value {
    let mut v = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": false,
        "add_bos_token": false,
        "add_eos_token": false,
    });
    let obj = v.as_object_mut().expect("an object");
    if let Value::Object(specials) = special_tokens_map(tok) {
        obj.extend(specials);
    }
    if crate::ChatTemplate::from_tokenizer(tok).is_ok() {
        obj.insert("chat_template".into(), KILN_CHAT_TEMPLATE.into());
    }
    v
}
