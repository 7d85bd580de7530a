//! The chat template: role and end-of-turn special tokens, and the encoding
//! of a conversation with a mask of the tokens the assistant wrote.
//!
//! A conversation is laid out as
//!
//! ```text
//! <|system|>S<|end|><|user|>U<|end|><|assistant|>A<|end|>...
//! ```
//!
//! with no extra whitespace (a model of a few million parameters has few
//! positions to spare). Message text is always encoded as ordinary text, so
//! a user who types `<|end|>` cannot end a turn (no template injection).
//! The assistant mask covers the assistant's text and its `<|end|>`: the
//! model learns what to say and when to stop, never the user's words or the
//! role markers that the template inserts.
//!
//! The layout is written once, as the Jinja [`KILN_CHAT_TEMPLATE`] that
//! model directories carry in `tokenizer_config.json`; kiln renders it
//! through [`crate::hf_template`], the path any Hugging Face template takes,
//! so transformers' `apply_chat_template` gives the same ids.

use std::path::Path;
use std::sync::{Arc, OnceLock};

mod model_template;

use crate::hf_template::{HfChatTemplate, TemplateTokens};
use crate::tokenizer::Tokenizer;

/// kiln's chat template in Jinja, as transformers renders it (an unknown
/// role or non-text content is an error, as in kiln).
pub const KILN_CHAT_TEMPLATE: &str = "{%- for message in messages -%}\n\
{%- if message['role'] not in ['system', 'user', 'assistant'] -%}\n\
{{- raise_exception('unknown role ' ~ message['role'] ~ '; a message role must be system, user or assistant') -}}\n\
{%- endif -%}\n\
{%- if message['content'] is not string -%}\n\
{{- raise_exception('message content must be text') -}}\n\
{%- endif -%}\n\
{{- '<|' ~ message['role'] ~ '|>' ~ message['content'] ~ '<|end|>' -}}\n\
{%- endfor -%}\n\
{%- if add_generation_prompt -%}\n\
{{- '<|assistant|>' -}}\n\
{%- endif -%}\n";

/// [`KILN_CHAT_TEMPLATE`], compiled once.
fn kiln_template() -> Arc<HfChatTemplate> {
    static COMPILED: OnceLock<Arc<HfChatTemplate>> = OnceLock::new();
    COMPILED
        .get_or_init(|| {
            Arc::new(
                HfChatTemplate::new(KILN_CHAT_TEMPLATE).expect("kiln's chat template compiles"),
            )
        })
        .clone()
}

/// The special tokens a chat model's files name (tokenizer_config.json,
/// special_tokens_map.json) and its template sees: `<|endoftext|>` begins a
/// text and pads (it never occurs inside a chat, so a sequence classifier
/// pooling the last non-pad token reads the closing `<|end|>`), `<|end|>`
/// ends a turn and so is the eos token (generation stops there), the role
/// markers are additional special tokens.
pub fn template_tokens(tok: &Tokenizer) -> TemplateTokens {
    let eot = tok
        .special_id(crate::ENDOFTEXT)
        .map(|_| crate::ENDOFTEXT.to_string());
    TemplateTokens {
        bos_token: eot.clone(),
        eos_token: tok.special_id(END_OF_TURN).map(|_| END_OF_TURN.to_string()),
        unk_token: None,
        pad_token: eot,
        additional_special_tokens: [SYSTEM, USER, ASSISTANT]
            .into_iter()
            .filter(|t| tok.special_id(t).is_some())
            .map(str::to_string)
            .collect(),
    }
}

/// Starts a system message.
pub const SYSTEM: &str = "<|system|>";
/// Starts a user message.
pub const USER: &str = "<|user|>";
/// Starts an assistant message (also the end of a generation prompt).
pub const ASSISTANT: &str = "<|assistant|>";
/// Ends every message; generation stops after it.
pub const END_OF_TURN: &str = "<|end|>";
/// The special tokens a tokenizer needs for the chat template.
pub const CHAT_SPECIAL_TOKENS: [&str; 4] = [SYSTEM, USER, ASSISTANT, END_OF_TURN];

/// `<|endoftext|>` followed by the chat tokens: the special-token list to
/// train a chat-capable tokenizer with.
pub fn default_special_tokens() -> Vec<String> {
    std::iter::once(crate::ENDOFTEXT)
        .chain(CHAT_SPECIAL_TOKENS)
        .map(str::to_string)
        .collect()
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::System, Role::User, Role::Assistant];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// Parses an OpenAI-style role name.
    pub fn parse(name: &str) -> Result<Role, ChatError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| ChatError::UnknownRole(name.to_string()))
    }

    /// The special token that starts a message of this role.
    pub fn marker(self) -> &'static str {
        match self {
            Role::System => SYSTEM,
            Role::User => USER,
            Role::Assistant => ASSISTANT,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a conversation (OpenAI's `{"role", "content"}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// The chat template cannot be used or was given an unusable conversation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error(
        "the tokenizer has no chat special token(s) {missing:?}; train one with them, e.g. \
         `kiln tokenizer train --special '<|endoftext|>' --special '<|system|>' --special \
         '<|user|>' --special '<|assistant|>' --special '<|end|>' ...` \
         (kiln pipeline does this), or use a tokenizer.json that defines them"
    )]
    MissingSpecialTokens { missing: Vec<String> },
    #[error("unknown role {0:?}; a message's role must be system, user or assistant")]
    UnknownRole(String),
    #[error("the conversation is empty")]
    Empty,
    #[error("the conversation has no assistant message to learn from")]
    NoAssistant,
    #[error("{0}")]
    Template(String),
}

/// A conversation encoded for training: `ids[i]` is learned (is a target)
/// when `assistant_mask[i]` is true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChat {
    pub ids: Vec<u32>,
    pub assistant_mask: Vec<bool>,
}

impl EncodedChat {
    /// Number of tokens the assistant wrote (including its `<|end|>`s).
    pub fn assistant_tokens(&self) -> usize {
        self.assistant_mask.iter().filter(|&&m| m).count()
    }
}

/// How a model formats a conversation: a Jinja chat template rendered as
/// transformers renders it, the special tokens it sees, and the token that
/// ends an assistant turn (generation stops there).
///
/// kiln's own models use [`KILN_CHAT_TEMPLATE`] ([`Self::from_tokenizer`]);
/// an open model uses the `chat_template` and special tokens of its
/// `tokenizer_config.json` ([`Self::for_model_dir`]), so fine-tuning it keeps
/// the format it was instruction-tuned with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    jinja: Arc<HfChatTemplate>,
    tokens: TemplateTokens,
    end_id: u32,
    /// Special ids that end a decoded reply: the end of turn, and any other
    /// special token (a role marker means the model began another turn).
    stop_ids: Vec<u32>,
    /// The model's tokenizer_config.json, kept to be written back unchanged
    /// beside a fine-tuned model; `None` for kiln's template.
    model_config: Option<Arc<serde_json::Value>>,
}

impl PartialEq for ChatTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.jinja.source() == other.jinja.source()
            && self.tokens == other.tokens
            && self.end_id == other.end_id
            && self.stop_ids == other.stop_ids
    }
}

impl ChatTemplate {
    /// kiln's template: looks the chat special tokens up; names every
    /// missing one.
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Self, ChatError> {
        let ids: Vec<Option<u32>> = CHAT_SPECIAL_TOKENS
            .iter()
            .map(|t| tok.special_id(t))
            .collect();
        if let [Some(_), Some(_), Some(_), Some(end_id)] = ids[..] {
            return Ok(ChatTemplate {
                jinja: kiln_template(),
                tokens: template_tokens(tok),
                end_id,
                stop_ids: ids.into_iter().flatten().collect(),
                model_config: None,
            });
        }
        Err(ChatError::MissingSpecialTokens {
            missing: CHAT_SPECIAL_TOKENS
                .iter()
                .zip(&ids)
                .filter(|(_, id)| id.is_none())
                .map(|(t, _)| t.to_string())
                .collect(),
        })
    }

    /// The template a model directory declares: the `chat_template` of
    /// `dir/tokenizer_config.json` when it has one other than kiln's, else
    /// kiln's template (which needs kiln's chat tokens in `tok`).
    pub fn for_model_dir(dir: &Path, tok: &Tokenizer) -> Result<Self, ChatError> {
        let path = dir.join(crate::formats::hf_config::TOKENIZER_CONFIG_FILE);
        let config = model_template::read_config(&path)?;
        match config {
            Some(c) if model_template::has_own_template(&c) => {
                model_template::from_config(tok, c, &path)
            }
            _ => Self::from_tokenizer(tok).map_err(|e| match e {
                missing @ ChatError::MissingSpecialTokens { .. } => ChatError::Template(format!(
                    "{} has no chat_template (use an instruction-tuned model's directory, whose \
                     tokenizer_config.json names its template, or add a \"chat_template\" to \
                     that file), and kiln's own template cannot serve: {missing}",
                    path.display()
                )),
                other => other,
            }),
        }
    }

    /// The model's own template from a parsed `tokenizer_config.json`
    /// (`origin` names the file in errors).
    pub fn from_model_config(
        tok: &Tokenizer,
        config: serde_json::Value,
        origin: &Path,
    ) -> Result<Self, ChatError> {
        model_template::from_config(tok, config, origin)
    }

    /// Is this kiln's own template (not a model's)?
    pub fn is_kiln(&self) -> bool {
        self.model_config.is_none()
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        self.jinja.source()
    }

    /// The special tokens the template sees (`bos_token`, `eos_token`, ...).
    pub fn tokens(&self) -> &TemplateTokens {
        &self.tokens
    }

    /// A model template's tokenizer_config.json, as read.
    pub fn model_config(&self) -> Option<&serde_json::Value> {
        self.model_config.as_deref()
    }

    /// The token that ends an assistant turn: the stop token for generation.
    pub fn end_id(&self) -> u32 {
        self.end_id
    }

    /// Does `id` end a decoded reply (the end of turn or another special)?
    pub fn is_template_token(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// The ids of `messages` rendered through the template (with the
    /// generation prompt when `add_generation_prompt`).
    fn render(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ChatError> {
        let msgs: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        self.jinja
            .encode(tok, &msgs, add_generation_prompt, &self.tokens)
            .map_err(|e| ChatError::Template(e.to_string()))
    }

    /// Encodes a whole conversation for training. Fails when it is empty or
    /// has no assistant message (nothing would be learned). The mask of
    /// assistant message `i` spans from the end of the generation prompt
    /// after messages `..i` to the end of messages `..=i`.
    pub fn encode(&self, tok: &Tokenizer, messages: &[Message]) -> Result<EncodedChat, ChatError> {
        if messages.is_empty() {
            return Err(ChatError::Empty);
        }
        if !messages.iter().any(|m| m.role == Role::Assistant) {
            return Err(ChatError::NoAssistant);
        }
        let ids = self.render(tok, messages, false)?;
        let mut assistant_mask = vec![false; ids.len()];
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let start = self.prefix_len(tok, &ids, &messages[..i], true)?;
            let end = self.prefix_len(tok, &ids, &messages[..=i], false)?;
            assistant_mask[start..end].fill(true);
        }
        Ok(EncodedChat {
            ids,
            assistant_mask,
        })
    }

    /// The length of `messages`' rendering, checked to be a prefix of `full`.
    fn prefix_len(
        &self,
        tok: &Tokenizer,
        full: &[u32],
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<usize, ChatError> {
        let ids = self.render(tok, messages, add_generation_prompt)?;
        if !full.starts_with(&ids) {
            return Err(ChatError::Template(
                "the chat template does not render a conversation's start as a prefix of the \
                 whole, so replies cannot be masked"
                    .into(),
            ));
        }
        Ok(ids.len())
    }

    /// Encodes a prompt + completion pair (the preference / SFT layout):
    /// `prompt` messages, then the assistant's `completion` and `<|end|>`.
    /// Returns the ids and the number of prompt ids (everything before the
    /// completion's first token); the prompt ids equal [`Self::encode_prompt`].
    pub fn encode_completion(
        &self,
        tok: &Tokenizer,
        prompt: &[Message],
        completion: &str,
    ) -> Result<(Vec<u32>, usize), ChatError> {
        if prompt.is_empty() {
            return Err(ChatError::Empty);
        }
        let mut whole = prompt.to_vec();
        whole.push(Message::assistant(completion));
        let ids = self.render(tok, &whole, false)?;
        let prompt_len = self.prefix_len(tok, &ids, prompt, true)?;
        Ok((ids, prompt_len))
    }

    /// Encodes the conversation so far followed by `<|assistant|>`: the
    /// prompt from which a model generates the next assistant turn (stop it
    /// at [`Self::end_id`]).
    pub fn encode_prompt(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
    ) -> Result<Vec<u32>, ChatError> {
        if messages.is_empty() {
            return Err(ChatError::Empty);
        }
        self.render(tok, messages, true)
    }

    /// Decodes a generated assistant turn: the text before the first
    /// `<|end|>` (lossy UTF-8; any other template token also ends it), and
    /// whether the turn ended with `<|end|>`.
    pub fn decode_reply(&self, tok: &Tokenizer, ids: &[u32]) -> (String, bool) {
        let stop = ids.iter().position(|&i| self.is_template_token(i));
        let body = &ids[..stop.unwrap_or(ids.len())];
        let mut bytes = Vec::new();
        for &id in body {
            // Ids outside the vocabulary cannot come from a model of this
            // tokenizer; they are dropped rather than aborting a decode.
            if let Some(b) = tok.token_bytes(id) {
                bytes.extend_from_slice(b);
            }
        }
        let ended = stop.is_some_and(|i| ids[i] == self.end_id);
        (String::from_utf8_lossy(&bytes).into_owned(), ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{formats::hf, Pattern};

    const CORPUS: &[&str] = &[
        "What is two plus three? Five. Say a happy word about the sun.",
        "The sun is bright and warm and good. List three fruits: apple, pear, plum.",
        "In the beginning God created the heaven and the earth.",
    ];

    fn chat_tokenizer() -> Tokenizer {
        let specials: Vec<String> = default_special_tokens();
        let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
        crate::train(CORPUS, 400, Pattern::Gpt2, &refs, 0).unwrap()
    }

    fn conversation() -> Vec<Message> {
        vec![
            Message::system("Be brief."),
            Message::user("What is 2+3?"),
            Message::assistant("5"),
            Message::user("And <|end|> 4+4?"),
            Message::assistant("8"),
        ]
    }

    #[test]
    fn encode_lays_out_markers_and_masks_only_assistant_text_and_end() {
        let tok = chat_tokenizer();
        let t = ChatTemplate::from_tokenizer(&tok).unwrap();
        let conv = conversation();
        let enc = t.encode(&tok, &conv).unwrap();
        assert_eq!(enc.ids.len(), enc.assistant_mask.len());

        // Rebuild the expected layout message by message.
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for m in &conv {
            ids.push(tok.special_id(m.role.marker()).unwrap());
            mask.push(false);
            let body = tok.encode_ordinary(&m.content);
            let learned = m.role == Role::Assistant;
            mask.extend(std::iter::repeat_n(learned, body.len() + 1));
            ids.extend(body);
            ids.push(t.end_id);
        }
        assert_eq!(enc.ids, ids);
        assert_eq!(enc.assistant_mask, mask);
        // "5" + end and "8" + end.
        let expect = tok.encode_ordinary("5").len() + tok.encode_ordinary("8").len() + 2;
        assert_eq!(enc.assistant_tokens(), expect);
        // Decoding the masked tokens gives the assistant's words only.
        let learned: Vec<u32> = enc
            .ids
            .iter()
            .zip(&enc.assistant_mask)
            .filter(|(_, &m)| m)
            .map(|(&i, _)| i)
            .collect();
        assert_eq!(tok.decode(&learned).unwrap(), "5<|end|>8<|end|>");
    }

    #[test]
    fn decoded_encoding_reads_as_the_documented_layout() {
        let tok = chat_tokenizer();
        let t = ChatTemplate::from_tokenizer(&tok).unwrap();
        let conv = &conversation()[..3];
        let text = tok.decode(&t.encode(&tok, conv).unwrap().ids).unwrap();
        let want: String = conv
            .iter()
            .map(|m| format!("{}{}{END_OF_TURN}", m.role.marker(), m.content))
            .collect();
        assert_eq!(text, want);
        assert_eq!(
            text,
            "<|system|>Be brief.<|end|><|user|>What is 2+3?<|end|><|assistant|>5<|end|>"
        );
    }

    #[test]
    fn special_token_text_inside_a_message_stays_plain_text() {
        let tok = chat_tokenizer();
        let t = ChatTemplate::from_tokenizer(&tok).unwrap();
        let enc = t.encode(&tok, &conversation()).unwrap();
        // Exactly one <|end|> per message: the one typed by the user is text.
        let ends = enc.ids.iter().filter(|&&i| i == t.end_id).count();
        assert_eq!(ends, conversation().len());
        let text = tok.decode(&enc.ids).unwrap();
        assert!(text.contains("And <|end|> 4+4?"), "{text}");
    }

    #[test]
    fn prompt_is_a_prefix_of_the_full_encoding_and_ends_with_assistant() {
        let tok = chat_tokenizer();
        let t = ChatTemplate::from_tokenizer(&tok).unwrap();
        let conv = conversation();
        let full = t.encode(&tok, &conv).unwrap();
        let prompt = t.encode_prompt(&tok, &conv[..4]).unwrap();
        assert_eq!(*prompt.last().unwrap(), tok.special_id(ASSISTANT).unwrap());
        assert_eq!(&full.ids[..prompt.len()], &prompt[..]);
        assert!(full.assistant_mask[prompt.len()], "the reply is learned");
        assert!(!full.assistant_mask[prompt.len() - 1]);

        let (ids, plen) = t.encode_completion(&tok, &conv[..4], "8").unwrap();
        assert_eq!(plen, prompt.len());
        assert_eq!(ids, full.ids);
    }

    #[test]
    fn decode_reply_stops_at_end_and_reports_it() {
        let tok = chat_tokenizer();
        let t = ChatTemplate::from_tokenizer(&tok).unwrap();
        let mut ids = tok.encode_ordinary("apple, pear");
        let (text, ended) = t.decode_reply(&tok, &ids);
        assert_eq!((text.as_str(), ended), ("apple, pear", false));
        ids.push(t.end_id);
        ids.extend(tok.encode_ordinary(" junk"));
        let (text, ended) = t.decode_reply(&tok, &ids);
        assert_eq!((text.as_str(), ended), ("apple, pear", true));
        // A role marker mid-reply ends it too, but not with <|end|>.
        let ids = [
            tok.encode_ordinary("hi"),
            vec![tok.special_id(USER).unwrap()],
        ]
        .concat();
        assert_eq!(t.decode_reply(&tok, &ids), ("hi".to_string(), false));
    }

    #[test]
    fn specials_round_trip_through_tokenizer_json() {
        let tok = chat_tokenizer();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        hf::save(&tok, &path).unwrap();
        let back = crate::formats::load(&path).unwrap();
        let (a, b) = (
            ChatTemplate::from_tokenizer(&tok).unwrap(),
            ChatTemplate::from_tokenizer(&back).unwrap(),
        );
        assert_eq!(a, b);
        let conv = conversation();
        assert_eq!(t_ids(&tok, &conv), t_ids(&back, &conv));
        // The specials are distinct, and decode to their text.
        for s in CHAT_SPECIAL_TOKENS {
            let id = back.special_id(s).unwrap();
            assert_eq!(back.token_bytes(id).unwrap(), s.as_bytes());
        }
    }

    fn t_ids(tok: &Tokenizer, conv: &[Message]) -> Vec<u32> {
        ChatTemplate::from_tokenizer(tok)
            .unwrap()
            .encode(tok, conv)
            .unwrap()
            .ids
    }

    #[test]
    fn missing_specials_are_named_with_the_fix() {
        let tok = crate::train(CORPUS, 300, Pattern::Gpt2, &[crate::ENDOFTEXT, USER], 0).unwrap();
        let err = ChatTemplate::from_tokenizer(&tok).unwrap_err();
        assert_eq!(
            err,
            ChatError::MissingSpecialTokens {
                missing: vec![SYSTEM.into(), ASSISTANT.into(), END_OF_TURN.into()]
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("--special '<|assistant|>'"), "{msg}");
        assert!(msg.contains("kiln tokenizer train"), "{msg}");
    }

    #[test]
    fn empty_and_assistant_free_conversations_are_refused() {
        let tok = chat_tokenizer();
        let t = ChatTemplate::from_tokenizer(&tok).unwrap();
        assert_eq!(t.encode(&tok, &[]), Err(ChatError::Empty));
        assert_eq!(
            t.encode(&tok, &[Message::user("hi")]),
            Err(ChatError::NoAssistant)
        );
        assert_eq!(t.encode_prompt(&tok, &[]), Err(ChatError::Empty));
    }

    #[test]
    fn roles_parse_and_serialise_lowercase() {
        assert_eq!(Role::parse("assistant"), Ok(Role::Assistant));
        let err = Role::parse("tool").unwrap_err();
        assert!(err.to_string().contains("system, user or assistant"));
        let m: Message = serde_json::from_str(r#"{"role":"user","content":"hi"}"#).unwrap();
        assert_eq!(m, Message::user("hi"));
        assert_eq!(
            serde_json::to_string(&Message::assistant("ok")).unwrap(),
            r#"{"role":"assistant","content":"ok"}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn mask_and_ids_always_align(texts in proptest::collection::vec("[a-z <|>0-9]{0,12}", 1..6)) {
            let tok = chat_tokenizer();
            let t = ChatTemplate::from_tokenizer(&tok).unwrap();
            let conv: Vec<Message> = texts
                .iter()
                .enumerate()
                .map(|(i, s)| Message::new(if i % 2 == 0 { Role::User } else { Role::Assistant }, s.clone()))
                .chain(std::iter::once(Message::assistant("x")))
                .collect();
            let enc = t.encode(&tok, &conv).unwrap();
            proptest::prop_assert_eq!(enc.ids.len(), enc.assistant_mask.len());
            // One end-of-turn per message, always learned exactly for assistant turns.
            let ends: Vec<bool> = enc.ids.iter().zip(&enc.assistant_mask)
                .filter(|(&i, _)| i == t.end_id).map(|(_, &m)| m).collect();
            let want: Vec<bool> = conv.iter().map(|m| m.role == Role::Assistant).collect();
            proptest::prop_assert_eq!(ends, want);
        }
    }
}
