//! Round trips, streaming decode, special-token policies and adversarial
//! inputs (which must finish: the merge loop is O(n log n) per piece and the
//! lexer never backtracks).

mod common;

use kiln_tokenizer::{DecodeError, EncodeError, SpecialMode, SpecialPolicy, Tokenizer};
use proptest::prelude::*;
use std::sync::OnceLock;

fn cl100k() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| common::load_encoding("cl100k_base"))
}
fn r50k() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| common::load_encoding("r50k_base"))
}
fn o200k() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| common::load_encoding("o200k_base"))
}

fn stream(t: &Tokenizer, ids: &[u32]) -> String {
    let mut d = t.stream_decoder();
    let mut out = String::new();
    for &id in ids {
        let piece = d.step(id).unwrap();
        // Never a replacement char for a character that is merely split.
        out.push_str(&piece);
        assert!(d.pending().len() <= 3);
    }
    out + &d.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn decode_encode_is_identity(s in any::<String>()) {
        for t in [r50k(), cl100k(), o200k()] {
            let ids = t.encode_ordinary(&s);
            prop_assert_eq!(t.decode(&ids).unwrap(), s.clone());
            prop_assert_eq!(stream(t, &ids), s.clone());
        }
    }

    #[test]
    fn streaming_equals_lossy_decode(ids in proptest::collection::vec(0u32..100_000, 0..60)) {
        let t = cl100k();
        let ids: Vec<u32> = ids.into_iter().filter(|&i| t.token_bytes(i).is_some()).collect();
        prop_assert_eq!(stream(t, &ids), t.decode_lossy(&ids).unwrap());
    }
}

#[test]
fn streaming_holds_back_partial_characters() {
    let t = cl100k();
    // "é" is 0xC3 0xA9: feed the bytes as two single-byte tokens.
    let b1 = t.token_id(&[0xC3]).unwrap();
    let b2 = t.token_id(&[0xA9]).unwrap();
    let mut d = t.stream_decoder();
    assert_eq!(d.step(b1).unwrap(), "");
    assert_eq!(d.pending(), &[0xC3]);
    assert_eq!(d.step(b2).unwrap(), "é");
    // a dangling lead byte at the end becomes U+FFFD on finish
    assert_eq!(d.step(b1).unwrap(), "");
    assert_eq!(d.finish(), "\u{FFFD}");
    assert_eq!(
        t.stream_decoder().step(999_999),
        Err(DecodeError::UnknownId(999_999))
    );
}

#[test]
fn special_policies() {
    let t = cl100k();
    let text = "hi<|endoftext|>there<|fim_prefix|>";
    let eot = t.special_id("<|endoftext|>").unwrap();
    let fim = t.special_id("<|fim_prefix|>").unwrap();
    let all = t.encode(text, &SpecialPolicy::allow_all()).unwrap();
    assert!(all.contains(&eot) && all.contains(&fim));
    let as_text = t.encode(text, &SpecialPolicy::all_text()).unwrap();
    assert_eq!(as_text, t.encode_ordinary(text));
    assert!(!as_text.contains(&eot));
    assert_eq!(t.decode(&as_text).unwrap(), text);
    assert_eq!(
        t.encode(text, &SpecialPolicy::deny_all()),
        Err(EncodeError::DisallowedSpecial {
            token: "<|endoftext|>".into(),
            byte_offset: 2
        })
    );
    // allow one, text for the other
    let mixed = SpecialPolicy::all_text().with("<|endoftext|>", SpecialMode::Special);
    let ids = t.encode(text, &mixed).unwrap();
    assert!(ids.contains(&eot) && !ids.contains(&fim));
    assert_eq!(t.decode(&ids).unwrap(), text);
}

#[test]
fn adversarial_inputs_finish() {
    // One million '^' (one punctuation piece: the heap merge) and long runs
    // without split points; the check is that they finish and round-trip.
    let inputs = [
        "^".repeat(1_000_000),
        "a".repeat(300_000),
        "ab".repeat(150_000),
        " ".repeat(300_000),
        "\u{301}".repeat(100_000),
        "中".repeat(100_000),
    ];
    for t in [r50k(), cl100k(), o200k()] {
        for s in &inputs {
            let ids = t.encode_ordinary(s);
            assert!(!ids.is_empty() && ids.len() <= s.len());
            assert_eq!(t.decode(&ids).unwrap().len(), s.len());
        }
    }
}

#[test]
fn batch_equals_sequential() {
    let docs = common::corpus(3, 64, 2000);
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let t = o200k();
    let batch = t.encode_batch(&refs, &SpecialPolicy::all_text()).unwrap();
    for (d, ids) in refs.iter().zip(&batch) {
        assert_eq!(&t.encode_ordinary(d), ids);
    }
}
