//! The Rust fastText reader against fastText itself: lid.176.ftz's top
//! predictions on texts in many languages (tests/fixtures/lid176_predictions.json,
//! written by scripts/make_lid176_fixture.py with the `fasttext` package).

use kiln_data::fasttext::FastText;
use serde_json::Value;

const MODEL: &[u8] = include_bytes!("../models/lid.176.ftz");
const FIXTURE: &str = include_str!("fixtures/lid176_predictions.json");

#[test]
fn predictions_match_fasttext() {
    let ft = FastText::from_bytes(MODEL).expect("lid.176.ftz loads");
    assert_eq!(ft.labels().len(), 176);
    let cases: Vec<Value> = serde_json::from_str(FIXTURE).unwrap();
    assert!(cases.len() >= 20);
    for c in &cases {
        let text = c["text"].as_str().unwrap();
        let got = ft.predict(&text.replace('\n', " "));
        for (i, want) in c["top"].as_array().unwrap().iter().enumerate() {
            let (label, p) = (want[0].as_str().unwrap(), want[1].as_f64().unwrap() as f32);
            assert_eq!(got[i].0, label, "{text:?}: rank {i}: {got:?}");
            assert!(
                (got[i].1 - p).abs() < 1e-4,
                "{text:?}: {label} {} vs fastText {p}",
                got[i].1
            );
        }
    }
}
