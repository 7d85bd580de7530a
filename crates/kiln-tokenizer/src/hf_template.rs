//! Renders any Hugging Face `chat_template` (the Jinja source in a
//! `tokenizer_config.json`) the way transformers'
//! `apply_chat_template` does, and turns the text into ids.
//!
//! transformers compiles templates in a sandboxed Jinja environment with
//! `trim_blocks` and `lstrip_blocks` on, the `loopcontrols` extension,
//! `tojson` replaced by Python's `json.dumps` (no HTML escaping), and the
//! globals `raise_exception` and `strftime_now`; it renders with
//! `messages`, `add_generation_prompt` and the tokenizer's special tokens
//! (`bos_token`, `eos_token`, ...) and tokenizes the text without adding
//! special tokens. This module sets up minijinja the same way (Python's
//! string and dict methods come from minijinja-contrib's pycompat).
//!
//! Ids: special-token text that the template writes becomes the special
//! id, as in transformers. Special-token text inside a message's content
//! stays plain text (kiln's rule: a user who types `<|end|>` cannot end a
//! turn); content without such text gives exactly transformers' ids.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use crate::Tokenizer;

/// Marks the special-token text of message content through rendering
/// (Unicode noncharacters, reserved for a program's internal use).
const TEXT_OPEN: char = '\u{FDD0}';
const TEXT_CLOSE: char = '\u{FDD1}';
const NAME: &str = "chat_template";

/// A chat template cannot be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(pub String);

impl From<Error> for TemplateError {
    fn from(e: Error) -> Self {
        // minijinja's alternate form names the line and shows the source.
        let mut msg = e.to_string();
        if let Some(detail) = e.detail() {
            if !msg.contains(detail) {
                let _ = write!(msg, ": {detail}");
            }
        }
        TemplateError(msg)
    }
}

/// The special tokens a template sees (transformers passes the tokenizer's
/// `special_tokens_map`); `None` ones are undefined in the template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    pub additional_special_tokens: Vec<String>,
}

/// A compiled chat template.
pub struct HfChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for HfChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

impl HfChatTemplate {
    /// Compiles `source` with transformers' settings.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()?,
        );
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        // transformers' AssistantTracker tag only marks assistant text for
        // masks; rendering it is rendering its body.
        let source_owned = strip_generation_tags(source);
        env.add_template_owned(NAME, source_owned)?;
        Ok(HfChatTemplate {
            env,
            source: source.to_string(),
        })
    }

    /// The Jinja source it was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    /// `messages` are OpenAI-style objects (`{"role", "content", ...}`);
    /// their keys iterate in serde_json's (sorted) order, which only a
    /// template printing a whole message as JSON can tell.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        tokens: &TemplateTokens,
    ) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template(NAME)?;
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", messages.iter().map(to_value).collect()),
            ("add_generation_prompt", add_generation_prompt.into()),
            // transformers passes these (None unless given)
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        for (key, v) in [
            ("bos_token", &tokens.bos_token),
            ("eos_token", &tokens.eos_token),
            ("unk_token", &tokens.unk_token),
            ("pad_token", &tokens.pad_token),
        ] {
            if let Some(t) = v {
                ctx.push((key, Value::from(t.as_str())));
            }
        }
        if !tokens.additional_special_tokens.is_empty() {
            let extra: Value = tokens
                .additional_special_tokens
                .iter()
                .map(|t| Value::from(t.as_str()))
                .collect();
            ctx.push(("additional_special_tokens", extra));
        }
        Ok(tmpl.render(Value::from_pairs(ctx))?)
    }

    /// `apply_chat_template(messages, tokenize=True, ...)`: the rendered
    /// text's ids, where special-token text written by the template is the
    /// special id and special-token text inside message content is plain
    /// text.
    pub fn encode(
        &self,
        tok: &Tokenizer,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        tokens: &TemplateTokens,
    ) -> Result<Vec<u32>, TemplateError> {
        let marked = messages
            .iter()
            .map(|m| mark_content(tok, m))
            .collect::<Result<Vec<_>, _>>()?;
        let text = self.render(&marked, add_generation_prompt, tokens)?;
        Ok(encode_marked(tok, &text))
    }
}

/// A JSON value as a template value (objects keep their key order).
fn to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (_, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(xs) => xs.iter().map(to_value).collect(),
        J::Object(m) => Value::from_pairs(m.iter().map(|(k, x)| (k.as_str(), to_value(x)))),
    }
}

/// Wraps each special-token occurrence in a message's string content in
/// TEXT_OPEN/TEXT_CLOSE so that it survives rendering as plain text.
fn mark_content(
    tok: &Tokenizer,
    message: &serde_json::Value,
) -> Result<serde_json::Value, TemplateError> {
    let Some(content) = message.get("content").and_then(|c| c.as_str()) else {
        return Ok(message.clone());
    };
    if content.contains([TEXT_OPEN, TEXT_CLOSE]) {
        return Err(TemplateError(format!(
            "a message contains the Unicode noncharacter U+FDD0 or U+FDD1, which kiln \
             reserves for marking text; remove it from {content:?}"
        )));
    }
    let mut hits = tok.specials().find_iter(content).peekable();
    if hits.peek().is_none() {
        return Ok(message.clone());
    }
    let mut out = String::with_capacity(content.len() + 8);
    let mut last = 0;
    for m in hits {
        out.push_str(&content[last..m.start]);
        out.push(TEXT_OPEN);
        out.push_str(&content[m.start..m.end]);
        out.push(TEXT_CLOSE);
        last = m.end;
    }
    out.push_str(&content[last..]);
    let mut m = message.clone();
    m["content"] = out.into();
    Ok(m)
}

/// Ids of rendered text: special tokens outside marked spans are special
/// ids; everything else, marked spans included, is ordinary text encoded in
/// runs as long as possible (as if the marks were not there).
fn encode_marked(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let mut ids = Vec::with_capacity(text.len() / 3);
    let mut plain = String::new();
    let outside = |seg: &str, plain: &mut String, ids: &mut Vec<u32>| {
        let mut last = 0;
        for m in tok.specials().find_iter(seg) {
            plain.push_str(&seg[last..m.start]);
            // Text after a special token does not start the input (for
            // Metaspace's prepend_scheme "first").
            tok.encode_text(plain, ids.is_empty(), ids);
            plain.clear();
            ids.push(m.id);
            last = m.end;
        }
        plain.push_str(&seg[last..]);
    };
    let mut parts = text.split(TEXT_OPEN);
    let first = parts.next().unwrap_or("");
    outside(&first.replace(TEXT_CLOSE, ""), &mut plain, &mut ids);
    for part in parts {
        match part.split_once(TEXT_CLOSE) {
            Some((inside, rest)) => {
                plain.push_str(inside);
                outside(&rest.replace(TEXT_CLOSE, ""), &mut plain, &mut ids);
            }
            // the template cut the content short: the rest is still content
            None => plain.push_str(part),
        }
    }
    tok.encode_text(&plain, ids.is_empty(), &mut ids);
    ids
}

/// `{% generation %}` / `{% endgeneration %}` -> `{% if true %}` / `{% endif %}`,
/// keeping the whitespace-control marks.
fn strip_generation_tags(source: &str) -> String {
    let re = fancy_regex::Regex::new(r"\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}")
        .expect("the tag pattern compiles");
    re.replace_all(source, |c: &fancy_regex::Captures<'_, str>| {
        let (open, close) = (&c[1], &c[3]);
        if c.get(2).is_some() {
            format!("{{%{open} endif {close}%}}")
        } else {
            format!("{{%{open} if true {close}%}}")
        }
    })
    .into_owned()
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::Number => Some(" ".repeat(usize::try_from(v)?)),
        Some(v) => Some(v.as_str().unwrap_or_default().to_string()),
    };
    let (item, key) = match separators {
        Some(s) if !s.is_none() => {
            let a = s.get_item(&Value::from(0))?;
            let b = s.get_item(&Value::from(1))?;
            (
                a.as_str().unwrap_or(",").to_string(),
                b.as_str().unwrap_or(":").to_string(),
            )
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&value, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonStyle {
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonStyle {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, v: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        match v.kind() {
            ValueKind::Undefined => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: an undefined value is not JSON serializable",
                ))
            }
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&python_number(v)),
            ValueKind::String => self.string(v.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container('[', ']', items.len(), depth, out, |i, d, out| {
                    self.write(&items[i], d, out)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.container('{', '}', keys.len(), depth, out, |i, d, out| {
                    let k = &keys[i];
                    match k.as_str() {
                        Some(s) => self.string(s, out),
                        None => self.string(&k.to_string(), out),
                    }
                    out.push_str(&self.key);
                    self.write(&v.get_item(k)?, d, out)
                })?;
            }
            _ => self.string(&v.to_string(), out),
        }
        Ok(())
    }

    fn container(
        &self,
        open: char,
        close: char,
        n: usize,
        depth: usize,
        out: &mut String,
        mut item: impl FnMut(usize, usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if n == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..n {
            if i > 0 {
                out.push_str(&self.item);
            }
            self.newline(depth + 1, out);
            item(i, depth + 1, out)?;
        }
        self.newline(depth, out);
        out.push(close);
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A number as Python's `json.dumps` prints it (floats keep a `.0`).
fn python_number(v: &Value) -> String {
    if let Ok(i) = i64::try_from(v.clone()) {
        if v.is_integer() {
            return i.to_string();
        }
    }
    match f64::try_from(v.clone()) {
        Ok(f) if f.is_nan() => "NaN".into(),
        Ok(f) if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        Ok(f) if f == f.trunc() && f.abs() < 1e16 => format!("{f:.1}"),
        Ok(f) => {
            // Rust's shortest round-trip digits, in Python's exponent style
            let s = format!("{f:?}");
            match s.split_once('e') {
                Some((m, e)) => {
                    let e: i32 = e.parse().unwrap_or(0);
                    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
                }
                None => s,
            }
        }
        Err(_) => v.to_string(),
    }
}

/// transformers' `strftime_now(format)`: the current time (UTC here) in a
/// C `strftime` format; Llama-3-style templates print today's date.
fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs).map(Value::from)
}

/// The codes chat templates use: %Y %y %m %d %-d %e %H %M %S %b %B %a %A %j %%.
fn strftime(format: &str, unix_secs: i64) -> Result<String, Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let rem = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut code = chars.next().unwrap_or('%');
        let no_pad = code == '-';
        if no_pad {
            code = chars.next().unwrap_or('%');
        }
        let num = |n: i64, w: usize| {
            if no_pad {
                n.to_string()
            } else {
                format!("{n:0w$}")
            }
        };
        match code {
            'Y' => out.push_str(&y.to_string()),
            'y' => out.push_str(&num(y.rem_euclid(100), 2)),
            'm' => out.push_str(&num(m, 2)),
            'd' => out.push_str(&num(d, 2)),
            'e' => out.push_str(&format!("{d:2}")),
            'H' => out.push_str(&num(rem / 3600, 2)),
            'M' => out.push_str(&num(rem / 60 % 60, 2)),
            'S' => out.push_str(&num(rem % 60, 2)),
            'j' => out.push_str(&num(yday, 3)),
            'B' => out.push_str(MONTHS[(m - 1) as usize]),
            'b' => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            'A' => out.push_str(DAYS[weekday]),
            'a' => out.push_str(&DAYS[weekday][..3]),
            '%' => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: the format code %{other} is not supported"),
                ))
            }
        }
    }
    Ok(out)
}

/// Days since 1970-01-01 -> (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests;
