//! `kiln chat` through the real binary with piped stdin: replies streamed
//! to stdout (checked token for token against the library), conversation
//! history kept, oldest turns dropped with a notice when the context fills,
//! clear errors for a missing or chat-less tokenizer.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use kiln_model::{Gpt, GptConfig, SampleOptions};
use kiln_tokenizer::chat::default_special_tokens;
use kiln_tokenizer::{ChatTemplate, Message, Pattern, Tokenizer};

use crate::cli::{kiln_bin, s};

const CONTEXT: usize = 48;

fn tokenizer(specials: &[String]) -> Tokenizer {
    let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
    let corpus = ["hello there, how are you? I am well. What is 2 + 3? It is 5."];
    kiln_tokenizer::train(&corpus, 320, Pattern::Gpt2, &refs, 0).unwrap()
}

/// A random 1-layer model and its chat tokenizer saved in `dir`.
fn checkpoint(dir: &Path) -> Tokenizer {
    let tok = tokenizer(&default_special_tokens());
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let model = Gpt::new(
        &mut be,
        GptConfig::new(tok.vocab_size(), CONTEXT, 1, 2, 16),
        7,
    )
    .unwrap();
    // The model first: save_pretrained replaces the whole directory.
    model.save_pretrained(&mut be, dir).unwrap();
    kiln_tokenizer::formats::hf::save(&tok, &dir.join("tokenizer.json")).unwrap();
    tok
}

fn chat(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(kiln_bin())
        .arg("chat")
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A run that refuses its arguments exits before reading stdin, so the
    // pipe may already be closed: that is not a test failure.
    let written = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

/// What the library says the replies are, with the CLI's rules (reply n
/// uses seed + n; any special token ends it).
fn expected_replies(
    dir: &Path,
    tok: &Tokenizer,
    system: &str,
    users: &[&str],
    seed: u64,
) -> String {
    let template = ChatTemplate::from_tokenizer(tok).unwrap();
    let mut be = kiln_tensor::cpu_backend(Some(1));
    let mut model = Gpt::load_pretrained(&mut be, dir).unwrap();
    let specials: Vec<u32> = tok.special_tokens().iter().map(|(_, i)| *i).collect();
    let mut conv = vec![Message::system(system)];
    let mut out = String::new();
    for (n, u) in users.iter().enumerate() {
        conv.push(Message::user(*u));
        let prompt = template.encode_prompt(tok, &conv).unwrap();
        let opts = SampleOptions {
            max_new_tokens: 6,
            temperature: 1.0,
            seed: seed + n as u64,
            stop_token: Some(template.end_id()),
            ..SampleOptions::default()
        };
        let ids = model
            .generate_with(&mut be, &prompt, &opts, |id| !specials.contains(&id))
            .unwrap();
        let body: Vec<u32> = ids
            .into_iter()
            .take_while(|i| !specials.contains(i))
            .collect();
        let reply = tok.decode_lossy(&body).unwrap();
        out.push_str(&reply);
        out.push('\n');
        conv.push(Message::assistant(reply));
    }
    out
}

#[test]
fn chat_streams_replies_that_match_the_library_and_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let tok = checkpoint(dir.path());
    let args = [
        "--checkpoint",
        s(dir.path()),
        "--system",
        "Be brief.",
        "--temperature",
        "1.0",
        "--max-new-tokens",
        "6",
        "--seed",
        "11",
        "--threads",
        "1",
    ];
    let out = chat(&args, "hello there\n\nWhat is 2 + 3?\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let want = expected_replies(
        dir.path(),
        &tok,
        "Be brief.",
        &["hello there", "What is 2 + 3?"],
        11,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    assert!(!stderr.contains("dropped"), "{stderr}");
    // The same session again gives the same replies; /quit ends it early.
    let again = chat(&args, "hello there\nWhat is 2 + 3?\n/quit\nignored\n");
    assert_eq!(String::from_utf8_lossy(&again.stdout), want);
}

#[test]
fn a_full_context_drops_the_oldest_turns_and_an_oversized_line_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tok = checkpoint(dir.path());
    // A line of 20+ tokens: alone it fits (n + 3 tokens with the markup,
    // 8 kept for the reply); with the previous turn (2n + 7 at least) not.
    let mut line = String::from("hello");
    while tok.encode_ordinary(&line).len() < 20 {
        line.push_str(" how are you");
    }
    let n = tok.encode_ordinary(&line).len();
    assert!(
        n + 3 <= CONTEXT - 8 && 2 * n + 7 > CONTEXT - 8,
        "{n} tokens"
    );
    let huge = "hello there ".repeat(40);
    let input = format!("{line}\n{line}\n{huge}\n{line}\n");
    let out = chat(
        &[
            "--checkpoint",
            s(dir.path()),
            "--max-new-tokens",
            "8",
            "--threads",
            "1",
        ],
        &input,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("context full: dropped the oldest"),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not fit the model's 48-token context"),
        "{stderr}"
    );
    // Three replies (the oversized line got none).
    assert_eq!(stderr.matches("dropped the oldest").count(), 2, "{stderr}");
}

#[test]
fn missing_or_chatless_tokenizers_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let tok = checkpoint(dir.path());
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let out = chat(&["--checkpoint", s(dir.path())], "hi\n");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no tokenizer at") && err.contains("--tokenizer FILE"),
        "{err}"
    );

    let plain = tokenizer(&[kiln_tokenizer::ENDOFTEXT.to_string()]);
    let path = dir.path().join("plain.json");
    kiln_tokenizer::formats::hf::save(&plain, &path).unwrap();
    let out = chat(
        &["--checkpoint", s(dir.path()), "--tokenizer", s(&path)],
        "hi\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kiln tokenizer train --special"), "{err}");
    drop(tok);
}
