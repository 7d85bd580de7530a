//! Which metrics share a chart: figures on one scale and read together
//! (loss with validation loss, chosen with rejected reward) go in one chart;
//! a metric no rule knows gets a chart of its own.

use crate::read::StageMetrics;

/// One chart of a stage: its title, y-axis label and columns.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartSpec {
    pub title: String,
    pub y_label: String,
    /// Indices into the stage's columns.
    pub columns: Vec<usize>,
    pub smooth: bool,
}

struct Rule {
    title: &'static str,
    y_label: &'static str,
    smooth: bool,
    matches: fn(&str) -> bool,
}

/// Bookkeeping columns: not worth a chart.
const HIDDEN: [&str; 7] = [
    "elapsed_s",
    "wall_s",
    "time",
    "timestamp",
    "epoch",
    "tokens",
    "tokens_seen",
];

/// First matching rule wins, so the specific rules come before the general
/// ones ("value_loss" before "loss", "reward_margin" before "reward").
const RULES: [Rule; 13] = [
    Rule {
        title: "Value loss",
        y_label: "loss",
        smooth: true,
        matches: |n| n.contains("value_loss") || n.contains("vf_loss"),
    },
    Rule {
        title: "Loss",
        y_label: "loss",
        smooth: true,
        matches: |n| n.contains("loss"),
    },
    Rule {
        title: "Learning rate",
        y_label: "learning rate",
        smooth: false,
        matches: |n| n == "lr" || n.ends_with("_lr") || n.contains("learning_rate"),
    },
    Rule {
        title: "Gradient norm",
        y_label: "L2 norm",
        smooth: true,
        matches: |n| n.contains("grad_norm"),
    },
    Rule {
        title: "Throughput",
        y_label: "per second",
        smooth: true,
        matches: |n| n.ends_with("per_s") || n.contains("throughput"),
    },
    Rule {
        title: "KL divergence",
        y_label: "nats",
        smooth: true,
        matches: |n| n.contains("kl"),
    },
    Rule {
        title: "Margins",
        y_label: "margin",
        smooth: true,
        matches: |n| n.contains("margin"),
    },
    Rule {
        title: "Accuracy",
        y_label: "fraction",
        smooth: true,
        matches: |n| n.contains("acc"),
    },
    Rule {
        title: "Reward",
        y_label: "reward",
        smooth: true,
        matches: |n| n.contains("reward") || n.contains("score"),
    },
    Rule {
        title: "Log-probabilities",
        y_label: "log-prob (nats)",
        smooth: true,
        matches: |n| n.contains("logp"),
    },
    Rule {
        title: "Entropy",
        y_label: "nats",
        smooth: true,
        matches: |n| n.contains("entropy"),
    },
    Rule {
        title: "Clip fraction",
        y_label: "fraction",
        smooth: true,
        matches: |n| n.contains("clip"),
    },
    Rule {
        title: "Response length",
        y_label: "tokens",
        smooth: true,
        matches: |n| n.contains("len"),
    },
];

pub fn is_hidden(name: &str) -> bool {
    HIDDEN.contains(&name.to_ascii_lowercase().as_str())
}

/// The charts of one stage: rule groups in rule order, then one chart per
/// unmatched metric in the order the file logs them.
pub fn charts_for(stage: &StageMetrics) -> Vec<ChartSpec> {
    let mut grouped: Vec<Vec<usize>> = vec![Vec::new(); RULES.len()];
    let mut own: Vec<usize> = Vec::new();
    for (i, col) in stage.columns.iter().enumerate() {
        let name = col.name.to_ascii_lowercase();
        if is_hidden(&name) {
            continue;
        }
        match RULES.iter().position(|r| (r.matches)(&name)) {
            Some(r) => grouped[r].push(i),
            None => own.push(i),
        }
    }
    let mut charts = Vec::new();
    for (rule, columns) in RULES.iter().zip(grouped) {
        if !columns.is_empty() {
            charts.push(ChartSpec {
                title: format!("{}: {}", stage.stage, rule.title),
                y_label: rule.y_label.to_string(),
                columns,
                smooth: rule.smooth,
            });
        }
    }
    for i in own {
        charts.push(ChartSpec {
            title: format!("{}: {}", stage.stage, stage.columns[i].name),
            y_label: stage.columns[i].name.clone(),
            columns: vec![i],
            smooth: true,
        });
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::metrics::parse_metrics;
    use std::path::Path;

    fn titles(line: &str) -> Vec<(String, Vec<String>)> {
        let m = parse_metrics("s", Path::new("m.jsonl"), line).unwrap();
        charts_for(&m)
            .into_iter()
            .map(|c| {
                let cols = c
                    .columns
                    .iter()
                    .map(|&i| m.columns[i].name.clone())
                    .collect();
                (c.title, cols)
            })
            .collect()
    }

    #[test]
    fn pretrain_metrics_make_four_charts() {
        let t = titles(
            "{\"step\":1,\"loss\":3,\"lr\":1e-3,\"grad_norm\":1,\"tokens_per_s\":9,\"elapsed_s\":1,\"val_loss\":3}\n",
        );
        assert_eq!(
            t,
            vec![
                (
                    "s: Loss".to_string(),
                    vec!["loss".to_string(), "val_loss".to_string()]
                ),
                ("s: Learning rate".to_string(), vec!["lr".to_string()]),
                (
                    "s: Gradient norm".to_string(),
                    vec!["grad_norm".to_string()]
                ),
                (
                    "s: Throughput".to_string(),
                    vec!["tokens_per_s".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn ppo_and_dpo_metrics_group_by_meaning() {
        let t = titles(
            "{\"step\":1,\"reward\":0.1,\"kl\":0.01,\"entropy\":2,\"clip_frac\":0.1,\"value_loss\":0.5,\
              \"policy_loss\":0.2,\"response_len\":20,\"reward_margin\":1,\"rewards.chosen\":1,\
              \"accuracy\":0.6,\"advantage_std\":1.0}\n",
        );
        let names: Vec<&str> = t.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "s: Value loss",
                "s: Loss",
                "s: KL divergence",
                "s: Margins",
                "s: Accuracy",
                "s: Reward",
                "s: Entropy",
                "s: Clip fraction",
                "s: Response length",
                "s: advantage_std",
            ]
        );
        let reward = &t.iter().find(|x| x.0 == "s: Reward").unwrap().1;
        assert_eq!(
            reward,
            &["reward".to_string(), "rewards.chosen".to_string()]
        );
    }

    #[test]
    fn trl_style_names_of_kiln_align_find_their_charts() {
        let t = titles(
            "{\"step\":1,\"split\":\"train\",\"loss\":1,\"rewards/chosen\":1,\"rewards/rejected\":0,\
              \"rewards/margins\":1,\"rewards/accuracies\":0.5,\"logps/chosen\":-3,\"logps/rejected\":-4,\
              \"approx_kl\":0.1,\"kl_coef\":0.05,\"vf_clip_frac\":0.1,\"pairs_per_s\":9,\"tokens\":40}\n\
             {\"step\":1,\"split\":\"eval\",\"loss\":1.2}\n",
        );
        let find = |title: &str| {
            t.iter()
                .find(|x| x.0 == title)
                .map(|x| x.1.clone())
                .unwrap_or_default()
        };
        assert_eq!(find("s: Loss"), ["loss", "eval_loss"]);
        assert_eq!(find("s: Reward"), ["rewards/chosen", "rewards/rejected"]);
        assert_eq!(find("s: Margins"), ["rewards/margins"]);
        assert_eq!(find("s: Accuracy"), ["rewards/accuracies"]);
        assert_eq!(
            find("s: Log-probabilities"),
            ["logps/chosen", "logps/rejected"]
        );
        assert_eq!(find("s: KL divergence"), ["approx_kl", "kl_coef"]);
        assert_eq!(find("s: Clip fraction"), ["vf_clip_frac"]);
        assert_eq!(find("s: Throughput"), ["pairs_per_s"]);
        assert_eq!(t.len(), 8, "tokens is bookkeeping: {t:?}");
    }
}
