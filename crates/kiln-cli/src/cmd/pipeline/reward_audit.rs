//! The reward model measured on prompts it never saw: for held-out
//! evaluation tasks, a reference answer against a flawed one (the flaws of
//! kiln-eval: a wrong sum, a wrong length or count, the wrong mood, a reply
//! that does not stop), with the accuracy per task kind and per flaw, so the
//! summary says which judgement the reward model has not learned. A second
//! set pits each reference against itself cut short: a low accuracy there
//! means the model prefers shorter replies, which PPO will exploit.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use kiln_abi::BackendBox;
use kiln_align::data::EncodedPair;
use kiln_align::reward::RewardModel;
use kiln_eval::preferences::{written_pairs, JudgedPair};
use kiln_eval::tasks::{eval_tasks, Flaw};
use serde_json::{json, Value};

/// Accuracy of the reward model in `dir` on `n` held-out written pairs
/// (with the training pairs' `truncated_share`):
/// `{"pairs", "accuracy", "by_kind": {kind: {"pairs", "accuracy"}},
/// "by_flaw": {flaw: ...}, "truncated": {"pairs", "accuracy"}}`.
pub(super) fn audit(
    dir: &Path,
    n: usize,
    truncated_share: f32,
    threads: Option<usize>,
) -> Result<Value> {
    let mut be = crate::backend::open(&Default::default(), threads)?;
    let mut rm = RewardModel::load(&mut be, dir, None)?;
    let pairs = written_pairs(eval_tasks(n, 11), 11, truncated_share);
    let (scored, too_long) = score(&mut be, &mut rm, &pairs)?;
    let cut: Vec<JudgedPair> = written_pairs(eval_tasks(n, 12), 12, 1.0)
        .into_iter()
        .filter(|p| p.flaw == Some(Flaw::Truncated))
        .collect();
    let (cut_scored, _) = score(&mut be, &mut rm, &cut)?;
    rm.release(&mut be)?;

    let mut by_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut by_flaw: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (p, right) in &scored {
        let flaw = p.flaw.map_or("none", |f| f.name());
        for e in [
            by_kind.entry(p.task.spec.kind().name()).or_default(),
            by_flaw.entry(flaw).or_default(),
        ] {
            e.0 += 1;
            e.1 += usize::from(*right);
        }
    }
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
    let right = scored.iter().filter(|(_, r)| *r).count();
    let cut_right = cut_scored.iter().filter(|(_, r)| *r).count();
    Ok(json!({
        "pairs": scored.len(),
        "too_long": too_long,
        "accuracy": share(right, scored.len()),
        "by_kind": table(&by_kind),
        "by_flaw": table(&by_flaw),
        "truncated": { "pairs": cut_scored.len(), "accuracy": share(cut_right, cut_scored.len()) },
    }))
}

/// Each pair that fits the model's context, with whether the reward model
/// ranks its chosen reply above the rejected one; and how many did not fit
/// (a rambling reply can outgrow a small context).
fn score<'p>(
    be: &mut BackendBox,
    rm: &mut RewardModel,
    pairs: &'p [JudgedPair],
) -> Result<(Vec<(&'p JudgedPair, bool)>, usize)> {
    let max_len = rm.lm.max_seq_len();
    let mut encoded = Vec::new();
    let mut kept = Vec::new();
    for p in pairs {
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
        if pair.max_len() <= max_len {
            encoded.push(pair);
            kept.push(p);
        }
    }
    let mut out = Vec::with_capacity(kept.len());
    for (group, ps) in encoded.chunks(32).zip(kept.chunks(32)) {
        let views: Vec<&EncodedPair> = group.iter().collect();
        let (chosen, rejected) = rm.score_pairs(be, &views)?;
        for ((c, r), p) in chosen.iter().zip(&rejected).zip(ps) {
            out.push((*p, c > r));
        }
    }
    Ok((out, pairs.len() - kept.len()))
}
