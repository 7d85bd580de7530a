//! `kiln data inspect`: examples of rejected records per reason.

use crate::process::Reject;
use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::path::Path;

/// Up to `sample` rejects per "filter/rule" (all rules, or only those whose
/// name contains `reason`), with the total count per rule.
pub fn samples(
    dir: &Path,
    reason: Option<&str>,
    sample: usize,
) -> io::Result<BTreeMap<String, (u64, Vec<Reject>)>> {
    let mut out: BTreeMap<String, (u64, Vec<Reject>)> = BTreeMap::new();
    let rej = dir.join("rejected");
    let mut files: Vec<_> = std::fs::read_dir(&rej)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (is this a curate output directory?)",
                    rej.display()
                ),
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.zst"))
        .collect();
    files.sort();
    for f in files {
        for line in crate::read::open(&f)?.lines() {
            let r: Reject = serde_json::from_str(&line?).map_err(io::Error::other)?;
            let key = format!("{}/{}", r.filter, r.rule);
            if reason.is_some_and(|want| !key.contains(want)) {
                continue;
            }
            let e = out.entry(key).or_default();
            e.0 += 1;
            if e.1.len() < sample {
                e.1.push(r);
            }
        }
    }
    Ok(out)
}
