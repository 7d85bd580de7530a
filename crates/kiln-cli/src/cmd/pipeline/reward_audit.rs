//! The reward model measured on prompts it never saw: for held-out
//! evaluation tasks, a reference answer against a flawed one (the flaws of
//! kiln-eval: a wrong sum, a wrong length or count, the wrong mood, a reply
//! that does not stop), with the accuracy per task kind and per flaw, so the
//! summary says which judgement the reward model has not learned.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use kiln_align::data::EncodedPair;
use kiln_align::reward::RewardModel;
use kiln_eval::preferences::written_pairs;
use kiln_eval::tasks::eval_tasks;
use serde_json::{json, Value};

/// Accuracy of the reward model in `dir` on `n` held-out written pairs:
/// `{"pairs", "accuracy", "by_kind": {kind: {"pairs", "accuracy"}},
/// "by_flaw": {flaw: {"pairs", "accuracy"}}}`.
pub(super) fn audit(dir: &Path, n: usize, threads: Option<usize>) -> Result<Value> {
    let mut be = kiln_tensor::cpu_backend(threads);
    let mut rm = RewardModel::load(&mut be, dir, None)?;
    let pairs = written_pairs(eval_tasks(n, 11), 11);
    let max_len = rm.lm.max_seq_len();
    let mut by_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut by_flaw: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut encoded = Vec::new();
    let mut labels = Vec::new();
    for p in &pairs {
        let tok = &rm.lm.tokenizer;
        let template = &rm.lm.template;
        let reply = |text: &str| {
            let mut ids = tok.encode_ordinary(text);
            ids.push(template.end_id());
            ids
        };
        let pair = EncodedPair {
            prompt: template.encode_prompt(tok, &p.prompt())?,
            chosen: reply(&p.chosen),
            rejected: reply(&p.rejected),
        };
        // A rambling reply can outgrow a small context: skip, counted.
        if pair.max_len() <= max_len {
            encoded.push(pair);
            let flaw = p.flaw.map_or("none", |f| f.name());
            labels.push((p.task.spec.kind().name(), flaw));
        }
    }
    for (group, labels) in encoded.chunks(32).zip(labels.chunks(32)) {
        let views: Vec<&EncodedPair> = group.iter().collect();
        let (chosen, rejected) = rm.score_pairs(&mut be, &views)?;
        for ((c, r), (kind, flaw)) in chosen.iter().zip(&rejected).zip(labels) {
            for e in [
                by_kind.entry(kind).or_default(),
                by_flaw.entry(flaw).or_default(),
            ] {
                e.0 += 1;
                e.1 += usize::from(c > r);
            }
        }
    }
    rm.release(&mut be)?;
    let total: usize = by_kind.values().map(|e| e.0).sum();
    let right: usize = by_kind.values().map(|e| e.1).sum();
    let share = |right: usize, total: usize| right as f64 / total.max(1) as f64;
    let table = |m: &BTreeMap<&str, (usize, usize)>| {
        m.iter()
            .map(|(k, &(t, r))| {
                (
                    k.to_string(),
                    json!({ "pairs": t, "accuracy": share(r, t) }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
    };
    Ok(json!({
        "pairs": total,
        "too_long": pairs.len() - total,
        "accuracy": share(right, total),
        "by_kind": table(&by_kind),
        "by_flaw": table(&by_flaw),
    }))
}
