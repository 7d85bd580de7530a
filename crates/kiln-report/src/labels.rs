//! Readable labels for the figures' JSON keys: "held_out_tasks.by_flaw.
//! wrong_sum.accuracy" reads "Held out tasks › by flaw › wrong sum ›
//! accuracy", "kl_to_sft" reads "KL to SFT", "wall_s" reads "wall (s)".

/// Words written otherwise in prose.
const WORDS: [(&str, &str); 18] = [
    ("kl", "KL"),
    ("sft", "SFT"),
    ("dpo", "DPO"),
    ("ppo", "PPO"),
    ("grpo", "GRPO"),
    ("rm", "RM"),
    ("rlhf", "RLHF"),
    ("lr", "learning rate"),
    ("val", "validation"),
    ("ppl", "perplexity"),
    ("docs", "documents"),
    ("eval", "evaluation"),
    ("num", "number of"),
    ("pii", "PII"),
    ("ips", "IPs"),
    ("utf8", "UTF-8"),
    ("id", "ID"),
    ("json", "JSON"),
];

/// A dotted, snake_case key as words, levels joined by " › ".
pub fn label(key: &str) -> String {
    let parts: Vec<String> = key.split('.').map(words).collect();
    let mut s = parts.join(" › ");
    if let Some(first) = s.chars().next() {
        let upper: String = first.to_uppercase().collect();
        s.replace_range(..first.len_utf8(), &upper);
    }
    s
}

fn words(part: &str) -> String {
    let tokens: Vec<&str> = part.split('_').filter(|t| !t.is_empty()).collect();
    let mut out: Vec<String> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        let last = i + 1 == tokens.len();
        if t == "per" && tokens.get(i + 1) == Some(&"s") && i + 2 == tokens.len() {
            out.push("per second".into());
            i += 2;
            continue;
        }
        if last && t == "s" && i > 0 {
            // A unit: "wall_s" -> "wall (s)".
            out.push("(s)".into());
        } else if let Some((_, w)) = WORDS.iter().find(|(k, _)| k.eq_ignore_ascii_case(t)) {
            out.push((*w).to_string());
        } else {
            out.push(t.to_string());
        }
        i += 1;
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_snake_keys_become_words() {
        assert_eq!(label("kl_to_sft"), "KL to SFT");
        assert_eq!(label("wall_s"), "Wall (s)");
        assert_eq!(label("pairs_per_s"), "Pairs per second");
        assert_eq!(
            label("held_out_tasks.by_flaw.wrong_sum.accuracy"),
            "Held out tasks › by flaw › wrong sum › accuracy"
        );
        assert_eq!(
            label("removed_docs_by_filter.lang"),
            "Removed documents by filter › lang"
        );
        assert_eq!(label("val_ppl"), "Validation perplexity");
        assert_eq!(label("eval.accuracy"), "Evaluation › accuracy");
        assert_eq!(label("s"), "S");
        assert_eq!(label(""), "");
    }
}
