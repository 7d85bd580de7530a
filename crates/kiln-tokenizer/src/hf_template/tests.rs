use serde_json::json;

use super::*;
use crate::Pattern;

fn render(source: &str, messages: serde_json::Value, gen: bool) -> Result<String, TemplateError> {
    let msgs = messages.as_array().unwrap().clone();
    let tokens = TemplateTokens {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        ..TemplateTokens::default()
    };
    HfChatTemplate::new(source)?.render(&msgs, gen, &tokens)
}

fn chat() -> serde_json::Value {
    json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello."},
    ])
}

#[test]
fn block_tags_on_their_own_lines_leave_no_whitespace() {
    // trim_blocks drops the newline after a tag, lstrip_blocks the
    // indentation before it: the Jinja2 settings transformers uses.
    let source = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content | trim }}]\n    {% else %}\n<{{ m.content }}>\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\nA:\n{% endif %}\n";
    assert_eq!(
        render(source, chat(), true).unwrap(),
        "<s>\n<Be brief.>\n[Hi]\n<Hello.>\nA:\n"
    );
    assert_eq!(
        render(source, chat(), false).unwrap(),
        "<s>\n<Be brief.>\n[Hi]\n<Hello.>\n"
    );
}

#[test]
fn loop_controls_namespaces_and_python_methods_work() {
    let source = "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}{{ m.content.strip().upper() }}{% if loop.last %}|{{ ns.n }}{% endif %}{% if m.content.startswith('Hello') %}{% break %}{% endif %}{% endfor %}";
    assert_eq!(render(source, chat(), false).unwrap(), "HIHELLO.|2");
}

#[test]
fn raise_exception_is_an_error_with_its_message() {
    let source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}";
    let e = render(source, chat(), false).unwrap_err().to_string();
    assert!(
        e.contains("Conversations must start with a user message"),
        "{e}"
    );
    let e = HfChatTemplate::new("{% for %}").unwrap_err().to_string();
    assert!(e.starts_with("chat template: "), "{e}");
}

#[test]
fn tools_and_documents_are_none_not_undefined() {
    let source = "{% if tools is not none %}tools{% else %}none{% endif %}";
    assert_eq!(render(source, chat(), false).unwrap(), "none");
}

#[test]
fn tojson_prints_as_python_json_dumps() {
    // (serde_json objects iterate their keys sorted; these already are)
    let m = json!([{"args": {"x": [1, 2.5, "a\"b\n<é>"], "y": null, "z": true}, "name": "f"}]);
    let tmpl = |s: &str| render(s, m.clone(), false).unwrap();
    // json.dumps(messages, ensure_ascii=False)
    assert_eq!(
        tmpl("{{ messages | tojson }}"),
        r#"[{"args": {"x": [1, 2.5, "a\"b\n<é>"], "y": null, "z": true}, "name": "f"}]"#
    );
    // json.dumps(messages[0]['args'], indent=2, sort_keys=True)
    assert_eq!(
        tmpl("{{ messages[0]['args'] | tojson(indent=2, sort_keys=True) }}"),
        "{\n  \"x\": [\n    1,\n    2.5,\n    \"a\\\"b\\n<é>\"\n  ],\n  \"y\": null,\n  \"z\": true\n}"
    );
    assert_eq!(
        tmpl("{{ messages[0]['args']['x'] | tojson(separators=(',', ':'), ensure_ascii=True) }}"),
        r#"[1,2.5,"a\"b\n<\u00e9>"]"#
    );
    assert_eq!(tmpl("{{ {} | tojson }}|{{ [] | tojson }}"), "{}|[]");
}

#[test]
fn strftime_formats_dates_like_c() {
    // 2023-11-14 22:13:20 UTC, a Tuesday, day 318 of the year
    let t = 1_700_000_000;
    assert_eq!(
        strftime("%d %b %Y, %A %H:%M:%S %j %y %-d %B %%", t).unwrap(),
        "14 Nov 2023, Tuesday 22:13:20 318 23 14 November %"
    );
    assert_eq!(strftime("%d %B %Y", 0).unwrap(), "01 January 1970");
    assert_eq!(strftime("%Y-%m-%d", 951_782_400).unwrap(), "2000-02-29");
    assert!(strftime("%Q", 0).is_err());
    // the global renders today's date
    let today = render("{{ strftime_now('%Y') }}", chat(), false).unwrap();
    assert!(today.parse::<i32>().unwrap() >= 2024, "{today}");
}

#[test]
fn generation_tags_render_their_body() {
    let source = "{% for m in messages %}{% if m.role == 'assistant' %}{%- generation -%} {{ m.content }} {%- endgeneration -%}{% endif %}{% endfor %}";
    assert_eq!(render(source, chat(), false).unwrap(), "Hello.");
}

fn tokenizer() -> Tokenizer {
    let corpus = ["hello there <b> and more text for merges: hello hello there"];
    crate::train(&corpus, 300, Pattern::Gpt2, &["<s>", "</s>", "<b>"], 0).unwrap()
}

#[test]
fn template_specials_are_ids_and_content_specials_are_text() {
    let tok = tokenizer();
    let t = HfChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{{ m.content }}</s>{% endfor %}",
    )
    .unwrap();
    let tokens = TemplateTokens {
        bos_token: Some("<s>".into()),
        ..TemplateTokens::default()
    };
    let msgs = vec![
        json!({"role": "user", "content": "hello </s> there<b>"}),
        json!({"role": "assistant", "content": "hello"}),
    ];
    let ids = t.encode(&tok, &msgs, false, &tokens).unwrap();
    let (bos, eos) = (
        tok.special_id("<s>").unwrap(),
        tok.special_id("</s>").unwrap(),
    );
    let mut want = vec![bos];
    want.extend(tok.encode_ordinary("hello </s> there<b>"));
    want.push(eos);
    want.extend(tok.encode_ordinary("hello"));
    want.push(eos);
    assert_eq!(ids, want);
    // The rendered text itself is unchanged by the marking.
    assert_eq!(
        t.render(&msgs, false, &tokens).unwrap(),
        "<s>hello </s> there<b></s>hello</s>"
    );
    let bad = vec![json!({"role": "user", "content": "a\u{FDD0}b"})];
    let e = t
        .encode(&tok, &bad, false, &tokens)
        .unwrap_err()
        .to_string();
    assert!(e.contains("U+FDD0"), "{e}");
}

proptest::proptest! {
    /// Whatever the content, the ids decode back to the rendered text and
    /// hold exactly the special ids the template wrote.
    #[test]
    fn ids_decode_to_the_rendered_text(a in "[a-z <>/sb]{0,16}", b in "[a-z <>/sb]{0,16}") {
        let tok = tokenizer();
        let t = HfChatTemplate::new("{% for m in messages %}<b>{{ m.content }}</s>{% endfor %}").unwrap();
        let msgs = vec![json!({"role": "user", "content": a}), json!({"role": "user", "content": b})];
        let tokens = TemplateTokens::default();
        let ids = t.encode(&tok, &msgs, false, &tokens).unwrap();
        let text = t.render(&msgs, false, &tokens).unwrap();
        proptest::prop_assert_eq!(tok.decode(&ids).unwrap(), text);
        let specials = ids.iter().filter(|&&i| tok.special_id("<b>") == Some(i) || tok.special_id("</s>") == Some(i)).count();
        proptest::prop_assert_eq!(specials, 4);
    }
}

#[test]
fn text_after_a_template_special_token_does_not_start_the_input() {
    // Metaspace with prepend_scheme "first" (Mistral): HF prepends "▁" only
    // to text at the start of the input, so the ids of a rendered chat are
    // those of the whole rendered text.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf_families/mistral.tokenizer.json");
    let tok = crate::formats::hf::load(&path).unwrap();
    let tmpl = HfChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}[{{ m.content }}]{{ eos_token }}{% endfor %}",
    )
    .unwrap();
    let msgs = [json!({"role": "user", "content": "the king"})];
    let tokens = TemplateTokens {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        ..TemplateTokens::default()
    };
    let text = tmpl.render(&msgs, false, &tokens).unwrap();
    let whole = tok
        .encode(&text, &crate::SpecialPolicy::allow_all())
        .unwrap();
    assert_eq!(tmpl.encode(&tok, &msgs, false, &tokens).unwrap(), whole);
    // and a text that starts the input does get its "▁"
    let mut first = Vec::new();
    tok.encode_text("[x", true, &mut first);
    let mut later = Vec::new();
    tok.encode_text("[x", false, &mut later);
    assert_ne!(first, later);
}
