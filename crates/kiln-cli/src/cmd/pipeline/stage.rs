//! The stage graph's bookkeeping: a marker per finished stage holding a
//! fingerprint of its inputs and settings, so a rerun skips what is done.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub(super) fn write_if_absent(path: &Path, bytes: &[u8]) -> Result<()> {
    if !path.exists() {
        std::fs::create_dir_all(path.parent().expect("a file in the run directory"))?;
        kiln_stdx::fs::write_atomic(path, bytes)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

/// A finished stage: its fingerprint and headline figures.
#[derive(Serialize, Deserialize)]
struct Marker {
    fingerprint: String,
    figures: Value,
}

/// Runs `body` unless the stage's marker matches `fingerprint`; returns
/// the stage's figures either way.
pub(super) fn stage(
    out: &Path,
    name: &str,
    fingerprint: &str,
    force: bool,
    body: impl FnOnce() -> Result<Value>,
) -> Result<Value> {
    let marker_path = out.join("stages").join(format!("{name}.json"));
    if !force {
        if let Ok(bytes) = std::fs::read(&marker_path) {
            if let Ok(m) = serde_json::from_slice::<Marker>(&bytes) {
                if m.fingerprint == fingerprint {
                    eprintln!("== {name}: up to date, skipped");
                    return Ok(m.figures);
                }
            }
        }
    }
    eprintln!("== {name}");
    let t0 = Instant::now();
    let mut figures = body().with_context(|| format!("pipeline stage `{name}` failed"))?;
    if let Value::Object(map) = &mut figures {
        map.insert("stage_wall_s".into(), json!(t0.elapsed().as_secs_f64()));
    }
    let marker = Marker {
        fingerprint: fingerprint.to_string(),
        figures: figures.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&marker)?;
    kiln_stdx::fs::write_atomic(&marker_path, &bytes)
        .with_context(|| format!("{}: cannot write", marker_path.display()))?;
    Ok(figures)
}

/// File names, sizes and content hashes (xxh3) of the input files: a
/// run directory that is copied or moved, or a corpus that is touched
/// without changing, keeps its stages; any change of content reruns them.
/// Hashing reads each file once (GB/s), cheap beside curating it.
pub(super) fn fingerprint_files(inputs: &[PathBuf]) -> Result<String> {
    let mut parts = Vec::new();
    for p in kiln_data::read::list_inputs(inputs)
        .with_context(|| format!("listing the inputs {inputs:?}"))?
    {
        let (len, hash) = content_hash(&p).with_context(|| format!("{}", p.display()))?;
        let name = p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        parts.push(format!("{name}:{len}:{hash:032x}"));
    }
    if parts.is_empty() {
        bail!("no input files in {inputs:?}");
    }
    Ok(parts.join(";"))
}

/// Length and xxh3-128 of a file's bytes, read in blocks.
fn content_hash(path: &Path) -> std::io::Result<(u64, u128)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher.digest128()))
}

pub(super) fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    kiln_tokenizer::formats::hf::load(path)
        .with_context(|| format!("loading tokenizer {}", path.display()))
}

/// Tokens in the shards of `dir` whose names start with `prefix`.
pub(super) fn count_tokens(dir: &Path, prefix: &str) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(".bin") {
            let bytes = std::fs::read(&path)?;
            total += kiln_data::shard::parse_header(&path, &bytes)?.tokens as u64;
        }
    }
    Ok(total)
}

/// Entropy (nats) of the training shard's unigram distribution: the loss of
/// the best model that ignores context, the bar pretraining must clear.
pub(super) fn unigram_entropy(shard: &Path) -> Result<f64> {
    let tokens = kiln_data::shard::read_shard(shard)?;
    // Counts indexed by token id: summed in a fixed order, so the figure is
    // the same bits on every run (a hash map's order is not).
    let mut counts = vec![0u64; tokens.iter().max().map_or(0, |&m| m as usize + 1)];
    for &t in &tokens {
        counts[t as usize] += 1;
    }
    let n = tokens.len() as f64;
    Ok(counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_follow_content_not_location_or_mtime() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (pa, pb) = (a.path().join("c.jsonl"), b.path().join("c.jsonl"));
        std::fs::write(&pa, "{\"text\":\"one\"}\n").unwrap();
        std::fs::write(&pb, "{\"text\":\"one\"}\n").unwrap();
        let fa = fingerprint_files(std::slice::from_ref(&pa)).unwrap();
        assert_eq!(
            fa,
            fingerprint_files(std::slice::from_ref(&pb)).unwrap(),
            "a copy"
        );
        std::fs::write(&pb, "{\"text\":\"two\"}\n").unwrap();
        assert_ne!(
            fa,
            fingerprint_files(&[pb]).unwrap(),
            "same size, new bytes"
        );
        let err = fingerprint_files(&[a.path().join("missing.jsonl")]).unwrap_err();
        assert!(format!("{err:#}").contains("missing.jsonl"), "{err:#}");
    }
}
