//! RLHF rounds: PPO against the reward model, then, from round 2, new
//! preference pairs sampled from the last round's policy and ranked by the
//! judge (the labeller), the reward model continued on them plus a replay
//! of earlier pairs, and PPO again from the last policy with its KL still
//! measured against the SFT model. This is the iterative RLHF of Llama 2
//! (Touvron et al. 2023, sec. 3.2): a reward model trained on one policy's
//! replies over-rates what the next policy drifts to, and fresh labels on
//! that policy's own replies are what correct it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_align::data::write_preferences;
use kiln_align::ppo::shuffle;
use kiln_eval::tasks::train_tasks;
use kiln_model::Rng;
use serde_json::{json, Map, Value};

use super::align::{
    chain, preference_lines, sample_judged_pairs, write_config, write_tasks, AlignPaths, AlignPlan,
};
use super::stage::stage;

/// The stage (and directory) of round `round`'s PPO: the last round's is
/// `ppo`, the model the judge scores as PPO's.
pub(super) fn ppo_stage(round: usize, rounds: usize) -> String {
    if round == rounds {
        "ppo".into()
    } else {
        format!("ppo_round{round}")
    }
}

/// Runs every round's stages after the first reward model (fingerprint
/// `reward_fp`), adding their figures to `summary`; returns the last PPO
/// stage's fingerprint.
pub(super) fn run(
    paths: &AlignPaths,
    plan: &AlignPlan,
    reward_fp: &str,
    threads: Option<usize>,
    force: bool,
    summary: &mut Map<String, Value>,
) -> Result<String> {
    let configs = paths.file("configs");
    // The PPO prompts are tasks, so that the judge's score of every rollout
    // is logged beside the reward model's (the same tasks, in the same
    // order, as tasks/ppo_prompts.jsonl).
    let ppo_tasks = paths.file("tasks/ppo_tasks.jsonl");
    let mut reward_fp = reward_fp.to_string();
    let mut reward_stage = "reward".to_string();
    let mut policy_stage = "sft".to_string();
    let mut ppo_fp = String::new();
    for round in 1..=plan.rlhf_rounds {
        if round > 1 {
            let pairs_stage = format!("preferences_round{round}");
            let pairs_fp = chain(
                &ppo_fp,
                &pairs_stage,
                &json!([
                    plan.round_pair_prompts,
                    plan.round_replay_pairs,
                    plan.pair_k,
                    plan.pair_min_gap,
                    plan.max_new_tokens
                ]),
            );
            let figures = stage(&paths.out, &pairs_stage, &pairs_fp, force, || {
                round_pairs(paths, plan, round, &policy_stage, threads)
            })?;
            summary.insert(pairs_stage.clone(), figures);

            let stage_name = format!("reward_round{round}");
            reward_fp = chain(&pairs_fp, &stage_name, &plan.round_reward);
            let config = write_config(&configs, &stage_name, &plan.round_reward)?;
            let figures = stage(&paths.out, &stage_name, &reward_fp, force, || {
                // `--model` is the last reward model: training continues.
                super::align::train_reward_stage(
                    paths,
                    &paths.model(&reward_stage),
                    &paths.file(&format!("{pairs_stage}/pairs.jsonl")),
                    &stage_name,
                    &config,
                    plan,
                    threads,
                )
            })?;
            summary.insert(stage_name.clone(), figures);
            reward_stage = stage_name;
        }

        let name = ppo_stage(round, plan.rlhf_rounds);
        let mut cfg = plan.ppo.clone();
        // A new round, new rollouts (round 1 keeps the configured seed).
        cfg.seed += (round - 1) as u64;
        ppo_fp = chain(&reward_fp, "ppo", &cfg);
        let config = write_config(&configs, &name, &cfg)?;
        let figures = stage(&paths.out, &name, &ppo_fp, force, || {
            write_tasks(&ppo_tasks, &train_tasks(plan.ppo_prompts, 3))?;
            let s = super::super::ppo::run_ppo(&super::super::ppo::Args {
                policy: paths.model(&policy_stage),
                reference: (round > 1).then(|| paths.model("sft")),
                reward: paths.model(&reward_stage),
                prompts: ppo_tasks.clone(),
                out: paths.file(&name),
                config: Some(config.clone()),
                skip_bad: false,
                gold_judge: true,
                threads,
                backend: Default::default(),
                iterations: None,
                batch_size: None,
                lr: None,
                kl_coef: None,
                max_new_tokens: None,
                seed: None,
                precision: None,
            })?;
            Ok(serde_json::to_value(&s)?)
        })?;
        summary.insert(name.clone(), figures);
        policy_stage = name;
    }
    Ok(ppo_fp)
}

/// Round `round`'s preference data: the judge's pairs of `policy_stage`'s
/// replies to new prompts (`new_pairs.jsonl`), and those plus a replay of
/// earlier rounds' pairs (`pairs.jsonl`, what the reward model trains on;
/// without the replay it would forget what round 1 taught it).
fn round_pairs(
    paths: &AlignPaths,
    plan: &AlignPlan,
    round: usize,
    policy_stage: &str,
    threads: Option<usize>,
) -> Result<Value> {
    let dir = paths.file(&format!("preferences_round{round}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    // Seeds apart from round 1's pair prompts (2), PPO prompts (3) and
    // eval tasks (4).
    let tasks = train_tasks(plan.round_pair_prompts, 100 + round as u64);
    let (pairs, stats) = sample_judged_pairs(
        &paths.model(policy_stage),
        &format!("the round {} PPO model", round - 1),
        &tasks,
        plan,
        7 + round as u64,
        threads,
    )?;
    let new_file = dir.join("new_pairs.jsonl");
    write_preferences(&new_file, &preference_lines(&pairs))?;

    let mut earlier = read_lines(&paths.file("preferences/pairs.jsonl"))?;
    for r in 2..round {
        earlier.extend(read_lines(
            &paths.file(&format!("preferences_round{r}/new_pairs.jsonl")),
        )?);
    }
    let replay = replay_sample(&earlier, plan.round_replay_pairs, round as u64);
    let mut text = std::fs::read_to_string(&new_file)
        .with_context(|| format!("{}: cannot read", new_file.display()))?;
    for line in &replay {
        text.push_str(line);
        text.push('\n');
    }
    let all = dir.join("pairs.jsonl");
    kiln_stdx::fs::write_atomic(&all, text.as_bytes())
        .with_context(|| format!("{}: cannot write", all.display()))?;
    eprintln!(
        "preferences_round{round}: {} new pairs (mean score chosen {:.3}, rejected {:.3}) + {} replayed",
        pairs.len(),
        stats.mean_chosen_score,
        stats.mean_rejected_score,
        replay.len()
    );
    let mut figures = serde_json::to_value(&stats)?;
    figures["replayed_pairs"] = json!(replay.len());
    figures["total_pairs"] = json!(pairs.len() + replay.len());
    Ok(figures)
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// `n` of `lines` (all when fewer), drawn without replacement, in the
/// drawn order (deterministic from `seed`).
fn replay_sample(lines: &[String], n: usize, seed: u64) -> Vec<String> {
    let mut order: Vec<usize> = (0..lines.len()).collect();
    shuffle(&mut order, &mut Rng::new(seed ^ 0x5EED_2E91));
    order
        .into_iter()
        .take(n)
        .map(|i| lines[i].clone())
        .collect()
}

/// The model directories of every round's PPO but the last, for the judge.
pub(super) fn earlier_ppo_models(paths_out: &Path, rounds: usize) -> Vec<(String, PathBuf)> {
    (1..rounds)
        .map(|r| {
            let name = ppo_stage(r, rounds);
            let dir = paths_out.join(&name).join("model");
            (name, dir)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_round_is_ppo_and_earlier_ones_are_numbered() {
        assert_eq!(ppo_stage(1, 1), "ppo");
        assert_eq!(ppo_stage(1, 3), "ppo_round1");
        assert_eq!(ppo_stage(3, 3), "ppo");
        let earlier = earlier_ppo_models(Path::new("/run"), 3);
        let names: Vec<&str> = earlier.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ppo_round1", "ppo_round2"]);
        assert_eq!(earlier[0].1, Path::new("/run/ppo_round1/model"));
    }

    #[test]
    fn replay_draws_distinct_lines_deterministically() {
        let lines: Vec<String> = (0..50).map(|i| format!("{{\"i\": {i}}}")).collect();
        let a = replay_sample(&lines, 20, 2);
        assert_eq!(a, replay_sample(&lines, 20, 2));
        assert_ne!(a, replay_sample(&lines, 20, 3));
        let mut uniq = a.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 20);
        assert_eq!(replay_sample(&lines, 80, 2).len(), 50);
    }
}
