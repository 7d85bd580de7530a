use super::*;
use kiln_tokenizer::chat::default_special_tokens;
use kiln_tokenizer::Pattern;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn line_error(err: DataError) -> (usize, String) {
    match err {
        DataError::Line { line, problem, .. } => (line, problem),
        other => panic!("expected a line error, got {other}"),
    }
}

const GOOD_PREF: &str = r#"{"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"}"#;

#[test]
fn prompt_may_be_a_string_or_messages_and_completions_strings_or_one_message() {
    let a = parse_preference(GOOD_PREF).unwrap();
    let b = parse_preference(
        r#"{"prompt": [{"role": "user", "content": "What is 2+3?"}],
            "chosen": [{"role": "assistant", "content": "5"}], "rejected": "6", "score": 1}"#,
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.prompt, vec![Message::user("What is 2+3?")]);
    assert_eq!((a.chosen.as_str(), a.rejected.as_str()), ("5", "6"));
}

#[test]
fn each_bad_preference_line_names_its_problem() {
    let cases = [
        (r#"{"prompt": "x", "chosen": "a""#, "malformed JSON"),
        (r#"["prompt", "chosen"]"#, "expected a JSON object"),
        (
            r#"{"prompt": "x", "chosen": "a"}"#,
            "missing field \"rejected\" (a preference line needs prompt, chosen and rejected)",
        ),
        (
            r#"{"prompt": "x", "chosen": "a", "rejected": null}"#,
            "missing field \"rejected\"",
        ),
        (
            r#"{"prompt": "x", "chosen": "  ", "rejected": "b"}"#,
            "empty completion in \"chosen\"",
        ),
        (
            r#"{"prompt": "", "chosen": "a", "rejected": "b"}"#,
            "\"prompt\" is empty",
        ),
        (
            r#"{"prompt": [], "chosen": "a", "rejected": "b"}"#,
            "\"prompt\" is an empty list",
        ),
        (
            r#"{"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}"#,
            "prompt[0]: unknown role \"robot\"",
        ),
        (
            r#"{"prompt": 7, "chosen": "a", "rejected": "b"}"#,
            "\"prompt\" must be a string or a list of messages",
        ),
        (
            r#"{"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}"#,
            "exactly one assistant message",
        ),
        (
            r#"{"prompt": "x", "chosen": "same", "rejected": "same"}"#,
            "identical",
        ),
    ];
    for (line, want) in cases {
        let err = parse_preference(line).unwrap_err();
        assert!(
            err.contains(want),
            "{line}\n  gave {err:?}\n  want {want:?}"
        );
    }
}

#[test]
fn each_bad_chat_line_names_its_problem() {
    let cases = [
        (r#"{"messages": [{"role": "user""#, "malformed JSON"),
        (r#"{"text": "hello"}"#, "missing field \"messages\""),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]}"#,
            "messages[1]: unknown role \"tool\"; a message's role must be system, user or assistant",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
            "no assistant message",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}"#,
            "empty completion",
        ),
        (
            r#"{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}"#,
            "messages[0] has no \"content\" string",
        ),
        (
            r#"{"messages": [{"content": "x"}]}"#,
            "messages[0] has no \"role\" string",
        ),
        (r#"{"messages": "hi"}"#, "must be a list"),
        (
            r#"{"prompt": "hi"}"#,
            "missing field \"completion\" (a prompt-completion line needs both)",
        ),
    ];
    for (line, want) in cases {
        let err = parse_chat(line).unwrap_err();
        assert!(
            err.contains(want),
            "{line}\n  gave {err:?}\n  want {want:?}"
        );
    }
}

#[test]
fn chats_read_in_both_layouts() {
    let a = parse_chat(r#"{"prompt": "hi", "completion": "hello"}"#).unwrap();
    let b = parse_chat(
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
    )
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_bad_line_stops_the_read_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{GOOD_PREF}\n\n{}\n{GOOD_PREF}\n",
        r#"{"prompt": "x", "chosen": "a"}"#
    );
    let path = write(&dir, "prefs.jsonl", &text);
    let err = read_preferences(&path, OnBad::Error).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:3: missing field \"rejected\"", path.display())),
        "{msg}"
    );
    assert!(msg.contains("--skip-bad"), "{msg}");
    assert_eq!(line_error(err).0, 3, "blank line 2 still counts");
}

#[test]
fn skip_mode_counts_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        GOOD_PREF,
        "not json",
        r#"{"prompt": "x", "chosen": "", "rejected": "b"}"#,
        "",
        GOOD_PREF,
    ];
    let path = write(&dir, "prefs.jsonl", &lines.join("\n"));
    let data = read_preferences(&path, OnBad::Skip).unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data.lines, vec![1, 5]);
    let skipped: Vec<usize> = data.skipped.iter().map(|s| s.line).collect();
    assert_eq!(skipped, vec![2, 3]);
    let report = data.skip_report().unwrap();
    assert!(report.contains("skipped 2 bad line(s), kept 2"), "{report}");
    assert!(report.contains("line 3: empty completion"), "{report}");
}

#[test]
fn invalid_utf8_is_a_bad_line_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chats.jsonl");
    let mut bytes = br#"{"prompt": "hi", "completion": "yo"}"#.to_vec();
    bytes.extend_from_slice(b"\n{\"prompt\": \"\xff\"}\n");
    std::fs::write(&path, bytes).unwrap();
    let (line, problem) = line_error(read_chats(&path, OnBad::Error).unwrap_err());
    assert_eq!(line, 2);
    assert!(problem.contains("UTF-8"), "{problem}");
}

#[test]
fn a_file_with_nothing_usable_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "p.jsonl", "junk\n\n");
    let err = read_preferences(&path, OnBad::Skip).unwrap_err();
    assert!(matches!(err, DataError::Empty { skipped: 1, .. }), "{err}");
    let missing = dir.path().join("absent.jsonl");
    let err = read_chats(&missing, OnBad::Error).unwrap_err();
    assert!(err.to_string().contains("absent.jsonl"), "{err}");
}

#[test]
fn written_files_read_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let chats = vec![
        ChatExample {
            messages: vec![
                Message::system("Be brief."),
                Message::user("Say \"hi\"\nplease"),
                Message::assistant("hi"),
            ],
        },
        ChatExample {
            messages: vec![Message::user("2+2?"), Message::assistant("4")],
        },
    ];
    let pairs = vec![PreferencePair {
        prompt: vec![Message::user("List 2 fruits.")],
        chosen: "apple, pear".into(),
        rejected: "apple, pear, plum, fig".into(),
    }];
    let prompts = vec![PromptExample {
        prompt: vec![Message::user("3+4?")],
    }];
    let (c, p, q) = (
        dir.path().join("c.jsonl"),
        dir.path().join("p.jsonl"),
        dir.path().join("q.jsonl"),
    );
    write_chats(&c, &chats).unwrap();
    write_preferences(&p, &pairs).unwrap();
    write_prompts(&q, &prompts).unwrap();
    assert_eq!(read_chats(&c, OnBad::Error).unwrap().items, chats);
    assert_eq!(read_preferences(&p, OnBad::Error).unwrap().items, pairs);
    assert_eq!(read_prompts(&q, OnBad::Error).unwrap().items, prompts);
    assert_eq!(std::fs::read_to_string(&c).unwrap().lines().count(), 2);
}

fn chat_tokenizer() -> (Tokenizer, ChatTemplate) {
    let specials = default_special_tokens();
    let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
    let corpus = ["What is two plus three? Five. List fruits: apple, pear, plum."];
    let tok = kiln_tokenizer::train(&corpus, 300, Pattern::Gpt2, &refs, 0).unwrap();
    let t = ChatTemplate::from_tokenizer(&tok).unwrap();
    (tok, t)
}

#[test]
fn too_long_records_are_refused_or_skipped_never_truncated() {
    let (tok, t) = chat_tokenizer();
    let short = ChatExample {
        messages: vec![Message::user("2+3?"), Message::assistant("5")],
    };
    let long = ChatExample {
        messages: vec![Message::user("plum ".repeat(40)), Message::assistant("5")],
    };
    let data = in_memory("chats", vec![short.clone(), long, short]);
    let max = 32;
    let (line, problem) = line_error(encode_chats(&tok, &t, &data, max, OnBad::Error).unwrap_err());
    assert_eq!(line, 2);
    assert!(
        problem.contains("do not fit the model's context of 32"),
        "{problem}"
    );
    let enc = encode_chats(&tok, &t, &data, max, OnBad::Skip).unwrap();
    assert_eq!(enc.lines, vec![1, 3]);
    assert_eq!(enc.skipped.len(), 1);
    assert!(enc.items.iter().all(|e| e.ids.len() <= max));

    let pairs = in_memory(
        "pairs",
        vec![PreferencePair {
            prompt: vec![Message::user("2+3?")],
            chosen: "5".into(),
            rejected: "fig ".repeat(50),
        }],
    );
    let err = encode_pairs(&tok, &t, &pairs, max, OnBad::Error).unwrap_err();
    assert!(
        err.to_string().contains("pairs:1: prompt + completion"),
        "{err}"
    );
    let prompts = in_memory(
        "prompts",
        vec![PromptExample {
            prompt: vec![Message::user("plum ".repeat(10))],
        }],
    );
    assert!(encode_prompts(&tok, &t, &prompts, max, 4, OnBad::Error).is_ok());
    let err = encode_prompts(&tok, &t, &prompts, max, 30, OnBad::Error).unwrap_err();
    assert!(
        err.to_string().contains("30 tokens left for the reply"),
        "{err}"
    );
}

#[test]
fn encoded_pairs_share_the_prompt_and_end_with_end_of_turn() {
    let (tok, t) = chat_tokenizer();
    let pair = PreferencePair {
        prompt: vec![Message::user("2+3?")],
        chosen: "5".into(),
        rejected: "six".into(),
    };
    let enc = encode_pairs(
        &tok,
        &t,
        &in_memory("p", vec![pair.clone()]),
        64,
        OnBad::Error,
    )
    .unwrap()
    .items
    .remove(0);
    assert_eq!(enc.prompt, t.encode_prompt(&tok, &pair.prompt).unwrap());
    for (ids, text) in [(&enc.chosen, "5"), (&enc.rejected, "six")] {
        assert_eq!(*ids.last().unwrap(), t.end_id());
        // kiln's layout: the completion's words, then <|end|>.
        let words = tok.encode_ordinary(text);
        assert_eq!(ids[..], [words, vec![t.end_id()]].concat()[..]);
        let full = [enc.prompt.clone(), ids.clone()].concat();
        let (want, _) = t.encode_completion(&tok, &pair.prompt, text).unwrap();
        assert_eq!(full, want);
    }
}
