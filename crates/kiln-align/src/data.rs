//! Chat and preference data: JSONL readers, writers and encoders.
//!
//! - Chats: one `{"messages": [{"role", "content"}, ...]}` per line
//!   (OpenAI's layout), or TRL's prompt-completion layout
//!   `{"prompt": ..., "completion": "..."}`.
//! - Preferences: `{"prompt": ..., "chosen": ..., "rejected": ...}` (TRL's
//!   convention). `prompt` is a string (one user message) or a message list;
//!   `chosen` / `rejected` are strings or a list holding one assistant message.
//! - Prompts (for PPO / GRPO rollouts): `{"prompt": ...}`.
//!
//! A bad line is an error naming `FILE:LINE` and the problem, or, with
//! [`OnBad::Skip`], a counted skip kept in [`Dataset::skipped`] for the
//! caller to log. Blank lines are ignored. Nothing is truncated: a chat or a
//! pair that does not fit the model's context is bad data like any other.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use kiln_tokenizer::{ChatTemplate, EncodedChat, Message, Role, Tokenizer};
use serde_json::{json, Map, Value};

/// A conversation to imitate (SFT learns its assistant turns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatExample {
    pub messages: Vec<Message>,
}

/// Two assistant replies to one prompt, `chosen` preferred over `rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencePair {
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
}

/// A prompt to generate from (on-policy methods).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptExample {
    pub prompt: Vec<Message>,
}

/// What a reader does with a bad line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBad {
    /// Stop with an error naming the file and line (the default).
    #[default]
    Error,
    /// Skip the line, count it and keep the reason.
    Skip,
}

/// A line left out under [`OnBad::Skip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: usize,
    pub problem: String,
}

/// Records read (or encoded) from one file, with their line numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset<T> {
    pub path: PathBuf,
    pub items: Vec<T>,
    /// 1-based source line of each item.
    pub lines: Vec<usize>,
    pub skipped: Vec<Skipped>,
}

impl<T> Dataset<T> {
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// One line for the log, e.g. "prefs.jsonl: skipped 2 bad lines (line 3:
    /// missing field \"rejected\"; line 9: ...)", or None when nothing was skipped.
    pub fn skip_report(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        const SHOWN: usize = 5;
        let mut reasons: Vec<String> = self
            .skipped
            .iter()
            .take(SHOWN)
            .map(|s| format!("line {}: {}", s.line, s.problem))
            .collect();
        if self.skipped.len() > SHOWN {
            reasons.push(format!("and {} more", self.skipped.len() - SHOWN));
        }
        Some(format!(
            "{}: skipped {} bad line(s), kept {} ({})",
            self.path.display(),
            self.skipped.len(),
            self.items.len(),
            reasons.join("; ")
        ))
    }
}

/// Reading, validating or writing data failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {problem} (fix the line, or skip bad lines with --skip-bad)", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{}: no usable records ({skipped} bad line(s) skipped)", path.display())]
    Empty { path: PathBuf, skipped: usize },
}

// ---- parsing one line ----

/// Why one line is unusable (becomes `FILE:LINE: problem`).
type LineResult<T> = Result<T, String>;

fn field<'v>(o: &'v Map<String, Value>, name: &str, needs: &str) -> LineResult<&'v Value> {
    o.get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("missing field {name:?} ({needs})"))
}

fn message(v: &Value, at: &str) -> LineResult<Message> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("{at} is not an object with \"role\" and \"content\""))?;
    let role = o
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{at} has no \"role\" string"))?;
    let role = Role::parse(role).map_err(|e| format!("{at}: {e}"))?;
    let content = o
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{at} has no \"content\" string"))?;
    Ok(Message::new(role, content))
}

fn messages(v: &Value, name: &str) -> LineResult<Vec<Message>> {
    let list = v
        .as_array()
        .ok_or_else(|| format!("{name:?} must be a list of {{\"role\", \"content\"}} messages"))?;
    if list.is_empty() {
        return Err(format!("{name:?} is an empty list"));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| message(m, &format!("{name}[{i}]")))
        .collect()
}

/// A prompt: a non-empty string (one user message) or a message list.
fn prompt(v: &Value) -> LineResult<Vec<Message>> {
    match v {
        Value::String(s) if s.trim().is_empty() => Err("\"prompt\" is empty".into()),
        Value::String(s) => Ok(vec![Message::user(s.clone())]),
        Value::Array(_) => messages(v, "prompt"),
        _ => Err("\"prompt\" must be a string or a list of messages".into()),
    }
}

/// A completion: a non-empty string, or a list of one assistant message.
fn completion(v: &Value, name: &str) -> LineResult<String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Array(_) => match &messages(v, name)?[..] {
            [m] if m.role == Role::Assistant => m.content.clone(),
            _ => {
                return Err(format!(
                    "{name:?} as a list must hold exactly one assistant message"
                ))
            }
        },
        _ => return Err(format!("{name:?} must be a string or a list of messages")),
    };
    if text.trim().is_empty() {
        return Err(format!("empty completion in {name:?}"));
    }
    Ok(text)
}

fn object(line: &str) -> LineResult<Map<String, Value>> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err("expected a JSON object".into()),
        Err(e) => Err(format!("malformed JSON: {e}")),
    }
}

/// Parses one chat line.
pub fn parse_chat(line: &str) -> LineResult<ChatExample> {
    let o = object(line)?;
    let messages = if let Some(v) = o.get("messages") {
        messages(v, "messages")?
    } else if o.contains_key("prompt") || o.contains_key("completion") {
        let needs = "a prompt-completion line needs both";
        let mut m = prompt(field(&o, "prompt", needs)?)?;
        m.push(Message::assistant(completion(
            field(&o, "completion", needs)?,
            "completion",
        )?));
        m
    } else {
        return Err("missing field \"messages\" (or \"prompt\" + \"completion\")".into());
    };
    let mut replies = messages.iter().filter(|m| m.role == Role::Assistant);
    let Some(_) = replies.clone().next() else {
        return Err("the chat has no assistant message to learn from".into());
    };
    if replies.any(|m| m.content.trim().is_empty()) {
        return Err("empty completion: an assistant message has no content".into());
    }
    Ok(ChatExample { messages })
}

/// Parses one preference line.
pub fn parse_preference(line: &str) -> LineResult<PreferencePair> {
    let o = object(line)?;
    let needs = "a preference line needs prompt, chosen and rejected";
    let pair = PreferencePair {
        prompt: prompt(field(&o, "prompt", needs)?)?,
        chosen: completion(field(&o, "chosen", needs)?, "chosen")?,
        rejected: completion(field(&o, "rejected", needs)?, "rejected")?,
    };
    if pair.chosen == pair.rejected {
        return Err("\"chosen\" and \"rejected\" are identical (the pair teaches nothing)".into());
    }
    Ok(pair)
}

/// Parses one prompt line.
pub fn parse_prompt(line: &str) -> LineResult<PromptExample> {
    let o = object(line)?;
    Ok(PromptExample {
        prompt: prompt(field(&o, "prompt", "a prompt line needs it")?)?,
    })
}

// ---- reading files ----

fn read_jsonl<T>(
    path: &Path,
    on_bad: OnBad,
    parse: impl Fn(&str) -> LineResult<T>,
) -> Result<Dataset<T>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut data = Dataset {
        path: path.to_path_buf(),
        items: Vec::new(),
        lines: Vec::new(),
        skipped: Vec::new(),
    };
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let parsed = match line {
            Ok(l) if l.trim().is_empty() => continue,
            Ok(l) => parse(&l),
            // Invalid UTF-8 is a bad line, not an I/O failure.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err("the line is not valid UTF-8".into())
            }
            Err(e) => return Err(io(e)),
        };
        data.accept(parsed, line_no, on_bad)?;
    }
    data.require_some()
}

impl<T> Dataset<T> {
    /// Keeps an item, or records / raises its problem.
    fn accept(&mut self, item: LineResult<T>, line: usize, on_bad: OnBad) -> Result<(), DataError> {
        match item {
            Ok(v) => {
                self.items.push(v);
                self.lines.push(line);
            }
            Err(problem) if on_bad == OnBad::Skip => self.skipped.push(Skipped { line, problem }),
            Err(problem) => {
                return Err(DataError::Line {
                    path: self.path.clone(),
                    line,
                    problem,
                })
            }
        }
        Ok(())
    }

    fn require_some(self) -> Result<Self, DataError> {
        if self.items.is_empty() {
            return Err(DataError::Empty {
                path: self.path,
                skipped: self.skipped.len(),
            });
        }
        Ok(self)
    }
}

/// Reads a chat JSONL file.
pub fn read_chats(path: &Path, on_bad: OnBad) -> Result<Dataset<ChatExample>, DataError> {
    read_jsonl(path, on_bad, parse_chat)
}

/// Reads a preference JSONL file.
pub fn read_preferences(path: &Path, on_bad: OnBad) -> Result<Dataset<PreferencePair>, DataError> {
    read_jsonl(path, on_bad, parse_preference)
}

/// Reads a prompt JSONL file (`{"prompt": ...}` per line; extra fields ignored).
pub fn read_prompts(path: &Path, on_bad: OnBad) -> Result<Dataset<PromptExample>, DataError> {
    read_jsonl(path, on_bad, parse_prompt)
}

// ---- writing files ----

fn messages_json(m: &[Message]) -> Value {
    serde_json::to_value(m).expect("messages serialise")
}

impl ChatExample {
    pub fn to_json(&self) -> Value {
        json!({ "messages": messages_json(&self.messages) })
    }
}

impl PreferencePair {
    pub fn to_json(&self) -> Value {
        json!({
            "prompt": messages_json(&self.prompt),
            "chosen": self.chosen,
            "rejected": self.rejected,
        })
    }
}

impl PromptExample {
    pub fn to_json(&self) -> Value {
        json!({ "prompt": messages_json(&self.prompt) })
    }
}

/// Writes one JSON value per line, atomically.
pub fn write_jsonl<'a>(
    path: &Path,
    rows: impl IntoIterator<Item = Value> + 'a,
) -> Result<(), DataError> {
    kiln_stdx::fs::write_atomic_with(path, |w| {
        for row in rows {
            serde_json::to_writer(&mut *w, &row)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
    .map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub fn write_chats(path: &Path, chats: &[ChatExample]) -> Result<(), DataError> {
    write_jsonl(path, chats.iter().map(ChatExample::to_json))
}

pub fn write_preferences(path: &Path, pairs: &[PreferencePair]) -> Result<(), DataError> {
    write_jsonl(path, pairs.iter().map(PreferencePair::to_json))
}

pub fn write_prompts(path: &Path, prompts: &[PromptExample]) -> Result<(), DataError> {
    write_jsonl(path, prompts.iter().map(PromptExample::to_json))
}

// ---- encoding with the chat template ----

/// A preference pair in token ids: `prompt` ends with `<|assistant|>`;
/// `chosen` / `rejected` are the completions, each ending with `<|end|>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl EncodedPair {
    /// Length of the longer of prompt+chosen and prompt+rejected.
    pub fn max_len(&self) -> usize {
        self.prompt.len() + self.chosen.len().max(self.rejected.len())
    }
}

struct TooLong {
    len: usize,
    max: usize,
}

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tokens do not fit the model's context of {} (kiln never truncates: shorten the \
             line or use a model with a longer context)",
            self.len, self.max
        )
    }
}

/// Encodes every chat with the template; a chat longer than `max_seq_len`
/// tokens is bad data (error or counted skip, never truncated).
pub fn encode_chats(
    tok: &Tokenizer,
    template: &ChatTemplate,
    data: &Dataset<ChatExample>,
    max_seq_len: usize,
    on_bad: OnBad,
) -> Result<Dataset<EncodedChat>, DataError> {
    encode_each(data, on_bad, |chat| {
        let enc = template
            .encode(tok, &chat.messages)
            .map_err(|e| e.to_string())?;
        if enc.ids.len() > max_seq_len {
            let too_long = TooLong {
                len: enc.ids.len(),
                max: max_seq_len,
            };
            return Err(format!("the chat's {too_long}"));
        }
        Ok(enc)
    })
}

/// Encodes every pair; one whose prompt + longer completion exceeds
/// `max_seq_len` tokens is bad data.
pub fn encode_pairs(
    tok: &Tokenizer,
    template: &ChatTemplate,
    data: &Dataset<PreferencePair>,
    max_seq_len: usize,
    on_bad: OnBad,
) -> Result<Dataset<EncodedPair>, DataError> {
    encode_each(data, on_bad, |pair| {
        // Each completion as the template writes an assistant turn (its
        // words, the end of turn and whatever the template adds after it).
        let reply = |text: &str| {
            template
                .encode_completion(tok, &pair.prompt, text)
                .map(|(ids, prompt_len)| (ids[..prompt_len].to_vec(), ids[prompt_len..].to_vec()))
                .map_err(|e| e.to_string())
        };
        let (prompt, chosen) = reply(&pair.chosen)?;
        let (prompt_again, rejected) = reply(&pair.rejected)?;
        if prompt != prompt_again {
            return Err(
                "the chat template renders the prompt differently for the two \
                        completions, so they cannot share it"
                    .into(),
            );
        }
        let enc = EncodedPair {
            chosen,
            rejected,
            prompt,
        };
        if enc.max_len() > max_seq_len {
            let too_long = TooLong {
                len: enc.max_len(),
                max: max_seq_len,
            };
            return Err(format!("prompt + completion: {too_long}"));
        }
        Ok(enc)
    })
}

/// Encodes every prompt (ending with `<|assistant|>`); a prompt that leaves
/// fewer than `min_new_tokens` positions of `max_seq_len` for the reply is
/// bad data.
pub fn encode_prompts(
    tok: &Tokenizer,
    template: &ChatTemplate,
    data: &Dataset<PromptExample>,
    max_seq_len: usize,
    min_new_tokens: usize,
    on_bad: OnBad,
) -> Result<Dataset<Vec<u32>>, DataError> {
    encode_each(data, on_bad, |p| {
        let ids = template
            .encode_prompt(tok, &p.prompt)
            .map_err(|e| e.to_string())?;
        let room = max_seq_len.saturating_sub(min_new_tokens);
        if ids.len() > room {
            return Err(format!(
                "the prompt's {} (with {min_new_tokens} tokens left for the reply)",
                TooLong {
                    len: ids.len(),
                    max: max_seq_len,
                }
            ));
        }
        Ok(ids)
    })
}

fn encode_each<T, U>(
    data: &Dataset<T>,
    on_bad: OnBad,
    f: impl Fn(&T) -> LineResult<U>,
) -> Result<Dataset<U>, DataError> {
    let mut out = Dataset {
        path: data.path.clone(),
        items: Vec::with_capacity(data.items.len()),
        lines: Vec::with_capacity(data.items.len()),
        skipped: data.skipped.clone(),
    };
    for (item, &line) in data.items.iter().zip(&data.lines) {
        out.accept(f(item), line, on_bad)?;
    }
    out.skipped.sort_by_key(|s| s.line);
    out.require_some()
}

/// Wraps in-memory records (e.g. generated tasks) as a dataset, numbering
/// them 1.. so later errors still point at a record.
pub fn in_memory<T>(name: &str, items: Vec<T>) -> Dataset<T> {
    Dataset {
        path: PathBuf::from(name),
        lines: (1..=items.len()).collect(),
        items,
        skipped: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
