//! MinHash signatures equal datatrove's (MinhashConfig defaults: 5-word
//! shingles, 14 x 8 hashes, xxhash64, seed 1), on a fixture made by running
//! datatrove 0.10 `MinhashDedupSignature.get_signature(get_shingles(text))`.

use kiln_data::dedup::minhash::{MinHashConfig, MinHasher};

#[test]
fn signatures_match_datatrove() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/minhash_datatrove.json")).unwrap();
    let m = MinHasher::new(MinHashConfig::default());
    for case in fixture["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Option<Vec<u64>> = case["signature"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap()).collect());
        assert_eq!(m.signature(text), want, "{text}");
    }
}
