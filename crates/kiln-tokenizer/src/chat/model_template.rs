//! An open model's own chat template, read from its `tokenizer_config.json`
//! as transformers reads it: `chat_template` (a string, or a list of named
//! templates of which transformers uses `default`) and the special tokens
//! the template sees (`bos_token`, `eos_token`, ..., each a string or an
//! `AddedToken` object with `content`).
//!
//! The token that ends an assistant turn is found by rendering a probe
//! conversation: the first special token the template writes after the
//! assistant's words (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3,
//! `</s>` for Mistral). That is what SFT learns to emit and where generation
//! stops, whatever `eos_token` says (a base model's eos is often the
//! end-of-text token, which a chat template never writes).

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::{ChatError, ChatTemplate, Message, KILN_CHAT_TEMPLATE};
use crate::hf_template::{HfChatTemplate, TemplateTokens};
use crate::Tokenizer;

/// `path` parsed, or `None` when there is no such file.
pub(super) fn read_config(path: &Path) -> Result<Option<Value>, ChatError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(path, format!("cannot read: {e}"))),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| fail(path, format!("not valid JSON: {e}")))
}

/// Does the config carry a chat template other than kiln's own?
pub(super) fn has_own_template(config: &Value) -> bool {
    match &config["chat_template"] {
        Value::String(s) => s != KILN_CHAT_TEMPLATE,
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

pub(super) fn from_config(
    tok: &Tokenizer,
    config: Value,
    origin: &Path,
) -> Result<ChatTemplate, ChatError> {
    let source = template_source(&config, origin)?;
    let jinja = HfChatTemplate::new(&source).map_err(|e| fail(origin, e.to_string()))?;
    let tokens = TemplateTokens {
        bos_token: token_text(&config, "bos_token"),
        eos_token: token_text(&config, "eos_token"),
        unk_token: token_text(&config, "unk_token"),
        pad_token: token_text(&config, "pad_token"),
        additional_special_tokens: config["additional_special_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(added_token_text)
            .collect(),
    };
    for (key, text) in [
        ("bos_token", &tokens.bos_token),
        ("eos_token", &tokens.eos_token),
    ] {
        if let Some(t) = text {
            if tok.special_id(t).is_none() {
                return Err(fail(
                    origin,
                    format!(
                        "{key} {t:?} is not a special token of the tokenizer; use the \
                         tokenizer.json shipped with this tokenizer_config.json"
                    ),
                ));
            }
        }
    }
    let mut template = ChatTemplate {
        jinja: Arc::new(jinja),
        tokens,
        end_id: 0,
        stop_ids: tok.special_tokens().iter().map(|(_, id)| *id).collect(),
        model_config: Some(Arc::new(config)),
    };
    template.end_id = find_end_of_turn(&template, tok, origin)?;
    Ok(template)
}

/// The template's source; for a list, the one transformers picks.
fn template_source(config: &Value, origin: &Path) -> Result<String, ChatError> {
    match &config["chat_template"] {
        Value::String(s) => Ok(s.clone()),
        Value::Array(list) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t["name"] == name)
                    .and_then(|t| t["template"].as_str())
            };
            named("default").map(str::to_string).ok_or_else(|| {
                let names: Vec<&str> = list.iter().filter_map(|t| t["name"].as_str()).collect();
                fail(
                    origin,
                    format!(
                        "chat_template is a list of named templates {names:?} without a \
                         \"default\" one; transformers needs one named \"default\""
                    ),
                )
            })
        }
        _ => Err(fail(origin, "has no chat_template".into())),
    }
}

/// A special token's text: a string, or an `AddedToken` object.
fn token_text(config: &Value, key: &str) -> Option<String> {
    added_token_text(&config[key])
}

fn added_token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The first special token the template writes after an assistant's reply.
fn find_end_of_turn(
    template: &ChatTemplate,
    tok: &Tokenizer,
    origin: &Path,
) -> Result<u32, ChatError> {
    let probe = [Message::user("Hi"), Message::assistant("Hello")];
    let context = |e: ChatError| fail(origin, format!("rendering a probe conversation: {e}"));
    let (ids, prompt_len) = template
        .encode_completion(tok, &probe[..1], &probe[1].content)
        .map_err(context)?;
    ids[prompt_len..]
        .iter()
        .copied()
        .find(|&id| template.stop_ids.contains(&id))
        .ok_or_else(|| {
            fail(
                origin,
                "the chat_template writes no special token after an assistant's reply, so \
                 kiln cannot tell where a turn ends (what SFT learns to emit and where \
                 generation stops); end assistant turns with the eos_token"
                    .into(),
            )
        })
}

fn fail(path: &Path, problem: String) -> ChatError {
    ChatError::Template(format!("{}: {problem}", path.display()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Pattern, Role};

    const CHATML: &str =
        include_str!("../../../../tests/fixtures/chat_templates/chatml_qwen.jinja");
    const LLAMA3: &str = include_str!("../../../../tests/fixtures/chat_templates/llama3.jinja");
    const CORPUS: &[&str] = &[
        "What is two plus three? Five. Say a happy word about the sun.",
        "You are a helpful assistant. system user assistant Hello there.",
    ];

    fn tokenizer(specials: &[&str]) -> Tokenizer {
        crate::train(CORPUS, 400, Pattern::Gpt2, specials, 0).unwrap()
    }

    fn chatml() -> (Tokenizer, ChatTemplate) {
        let tok = tokenizer(&["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        let config = json!({
            "chat_template": CHATML,
            "eos_token": {"content": "<|endoftext|>", "special": true},
            "pad_token": "<|endoftext|>",
            "bos_token": null,
        });
        let t = ChatTemplate::from_model_config(&tok, config, Path::new("tc.json")).unwrap();
        (tok, t)
    }

    #[test]
    fn chatml_ends_turns_with_im_end_whatever_eos_says() {
        let (tok, t) = chatml();
        assert!(!t.is_kiln());
        // eos is <|endoftext|> (a base model's); the template ends turns
        // with <|im_end|>, so that is what is learned and stops generation.
        assert_eq!(t.end_id(), tok.special_id("<|im_end|>").unwrap());
        let conv = [
            Message::user("What is two plus three?"),
            Message::assistant("Five."),
        ];
        let enc = t.encode(&tok, &conv).unwrap();
        let text = tok.decode(&enc.ids).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             What is two plus three?<|im_end|>\n<|im_start|>assistant\nFive.<|im_end|>\n"
        );
        // Learned: the reply, its <|im_end|> and the newline the template
        // writes after it; never the prompt.
        let learned: Vec<u32> = enc
            .ids
            .iter()
            .zip(&enc.assistant_mask)
            .filter(|(_, &m)| m)
            .map(|(&i, _)| i)
            .collect();
        assert_eq!(tok.decode(&learned).unwrap(), "Five.<|im_end|>\n");
        let prompt = t.encode_prompt(&tok, &conv[..1]).unwrap();
        assert!(tok
            .decode(&prompt)
            .unwrap()
            .ends_with("<|im_start|>assistant\n"));
        assert_eq!(&enc.ids[..prompt.len()], &prompt[..]);
        // A reply decodes up to <|im_end|>; another role marker ends it too.
        let reply = [tok.encode_ordinary("Five."), vec![t.end_id()]].concat();
        assert_eq!(t.decode_reply(&tok, &reply), ("Five.".to_string(), true));
        let runaway = [
            tok.encode_ordinary("Five."),
            vec![tok.special_id("<|im_start|>").unwrap()],
        ]
        .concat();
        assert_eq!(t.decode_reply(&tok, &runaway), ("Five.".to_string(), false));
    }

    #[test]
    fn llama3_ends_turns_with_eot_and_writes_its_bos() {
        let specials = [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ];
        let tok = tokenizer(&specials);
        let config = json!({
            "chat_template": [{"name": "default", "template": LLAMA3}, {"name": "tool_use", "template": "x"}],
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>",
        });
        let t = ChatTemplate::from_model_config(&tok, config, Path::new("tc.json")).unwrap();
        assert_eq!(t.end_id(), tok.special_id("<|eot_id|>").unwrap());
        let conv = [
            Message::user("Hi"),
            Message::new(Role::Assistant, "Hello there."),
        ];
        let enc = t.encode(&tok, &conv).unwrap();
        assert_eq!(enc.ids[0], tok.special_id("<|begin_of_text|>").unwrap());
        assert_eq!(*enc.ids.last().unwrap(), t.end_id());
        assert_eq!(
            enc.assistant_tokens(),
            tok.encode_ordinary("Hello there.").len() + 1
        );
    }

    #[test]
    fn unusable_configs_are_refused_naming_the_file_and_the_key() {
        let tok = tokenizer(&["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        let path = Path::new("model/tokenizer_config.json");
        let err = |config: Value| {
            ChatTemplate::from_model_config(&tok, config, path)
                .unwrap_err()
                .to_string()
        };
        let e = err(json!({"chat_template": CHATML, "eos_token": "</s>"}));
        assert!(
            e.contains("model/tokenizer_config.json") && e.contains("eos_token \"</s>\""),
            "{e}"
        );
        let e = err(json!({"chat_template": [{"name": "tool_use", "template": "x"}]}));
        assert!(e.contains("\"default\"") && e.contains("tool_use"), "{e}");
        let e = err(json!({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}));
        assert!(
            e.contains("no special token after an assistant's reply"),
            "{e}"
        );
        let e = err(json!({"chat_template": "{% for %}"}));
        assert!(
            e.contains("model/tokenizer_config.json: chat template"),
            "{e}"
        );
    }

    #[test]
    fn a_model_dir_without_its_own_template_falls_back_to_kilns_or_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let kiln_tok = tokenizer(
            &super::super::default_special_tokens()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        // No tokenizer_config.json, or one carrying kiln's template: kiln's.
        assert!(ChatTemplate::for_model_dir(dir.path(), &kiln_tok)
            .unwrap()
            .is_kiln());
        let config = crate::formats::hf_config::tokenizer_config(&kiln_tok, 64);
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        assert!(ChatTemplate::for_model_dir(dir.path(), &kiln_tok)
            .unwrap()
            .is_kiln());
        // A base model without a template and without kiln's tokens.
        let base = tokenizer(&["<|endoftext|>"]);
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": "<|endoftext|>"}"#,
        )
        .unwrap();
        let e = ChatTemplate::for_model_dir(dir.path(), &base)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has no chat_template") && e.contains("instruction-tuned"),
            "{e}"
        );
        // Its own template wins.
        let own = json!({"chat_template": CHATML, "eos_token": "<|im_end|>"});
        let chat_tok = tokenizer(&["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        std::fs::write(dir.path().join("tokenizer_config.json"), own.to_string()).unwrap();
        let t = ChatTemplate::for_model_dir(dir.path(), &chat_tok).unwrap();
        assert!(!t.is_kiln());
        assert_eq!(t.model_config().unwrap()["eos_token"], "<|im_end|>");
    }
}
