//! The programmatic judge: a score in [0, 1] for a reply to a task, with
//! the reason, graded so that partial improvements show.
//!
//! Per kind (a reference answer scores exactly 1):
//! - arithmetic: the first number of the reply counts. Right: 1; off by d:
//!   0.5 * max(0, 1 - d/4); no number: 0. Times brevity for any words
//!   after the number.
//! - words: 1 / (1 + |words - n|).
//! - list: items are split at commas (and "and"); count factor
//!   1 / (1 + |items - k|) times the share of items that are distinct
//!   members of the category.
//! - sentiment: share of the lexicon words that have the asked-for mood
//!   (0 without any), times 0.75 if the topic is not named, times brevity
//!   beyond 8 words.
//!
//! Brevity for `extra` surplus words is 1 / (1 + extra / 4): rambling on
//! costs, a word too many costs little.

use crate::tasks::{Task, TaskSpec, CATEGORIES, NEGATIVE_WORDS, POSITIVE_WORDS};

/// A judge's verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Judgement {
    /// In [0, 1]; 1 is a perfect answer.
    pub score: f32,
    /// Why, in a few words (for reports and samples).
    pub reason: String,
}

/// Words longer than the sentiment task needs before brevity applies.
const SENTIMENT_MAX_WORDS: usize = 8;

fn brevity(extra: usize) -> f32 {
    1.0 / (1.0 + extra as f32 / 4.0)
}

/// Lowercase alphanumeric words (punctuation separates).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Judges `reply` (the assistant's text, without the end-of-turn token).
pub fn judge(task: &Task, reply: &str) -> Judgement {
    let (score, reason) = match &task.spec {
        TaskSpec::Arithmetic { a, b } => arithmetic(a + b, reply),
        TaskSpec::Words { n, .. } => word_count(*n, reply),
        TaskSpec::List { k, category } => list(*k, category, reply),
        TaskSpec::Sentiment { happy, topic } => sentiment(*happy, topic, reply),
    };
    debug_assert!((0.0..=1.0).contains(&score), "{score}");
    Judgement { score, reason }
}

/// The score alone.
pub fn score(task: &Task, reply: &str) -> f32 {
    judge(task, reply).score
}

fn arithmetic(sum: u32, reply: &str) -> (f32, String) {
    let w = words(reply);
    let Some(first) = w.iter().find(|x| x.chars().all(|c| c.is_ascii_digit())) else {
        return (0.0, "no number".into());
    };
    // A run of digits too long for u64 is simply very wrong.
    let got: u64 = first.parse().unwrap_or(u64::MAX);
    let d = got.abs_diff(sum as u64);
    let correct = if d == 0 {
        1.0
    } else {
        0.5 * (1.0 - d as f32 / 4.0).max(0.0)
    };
    let extra = w.len() - 1;
    let verdict = if d == 0 {
        format!("{sum} is right")
    } else {
        format!("{got} is wrong, {sum} is right")
    };
    let reason = if extra > 0 {
        format!("{verdict}; {extra} extra word(s)")
    } else {
        verdict
    };
    (correct * brevity(extra), reason)
}

fn word_count(n: usize, reply: &str) -> (f32, String) {
    let c = reply
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .count();
    if c == 0 {
        return (0.0, "empty".into());
    }
    let score = 1.0 / (1.0 + c.abs_diff(n) as f32);
    (score, format!("{c} words, asked for {n}"))
}

fn list(k: usize, category: &str, reply: &str) -> (f32, String) {
    let members = CATEGORIES
        .iter()
        .find(|(c, _)| *c == category)
        .map(|(_, m)| *m)
        .unwrap_or(&[]);
    let items: Vec<String> = reply
        .split([',', ';', '\n'])
        .flat_map(|part| part.split(" and "))
        .map(|s| s.trim().trim_end_matches(['.', '!']).trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return (0.0, "no items".into());
    }
    let mut seen = Vec::new();
    for it in &items {
        if members.contains(&it.as_str()) && !seen.contains(it) {
            seen.push(it.clone());
        }
    }
    let m = items.len();
    let count = 1.0 / (1.0 + m.abs_diff(k) as f32);
    let share = seen.len() as f32 / m as f32;
    let reason = format!(
        "{m} items, asked for {k}; {} distinct {category}",
        seen.len()
    );
    (count * share, reason)
}

fn sentiment(happy: bool, topic: &str, reply: &str) -> (f32, String) {
    let w = words(reply);
    let count = |lex: &[&str]| w.iter().filter(|x| lex.contains(&x.as_str())).count();
    let (pos, neg) = (count(POSITIVE_WORDS), count(NEGATIVE_WORDS));
    let (want, mood) = if happy { (pos, "happy") } else { (neg, "sad") };
    if pos + neg == 0 {
        return (0.0, "no mood words".into());
    }
    let polarity = want as f32 / (pos + neg) as f32;
    let named = w.iter().any(|x| x == topic);
    let extra = w.len().saturating_sub(SENTIMENT_MAX_WORDS);
    let score = polarity * if named { 1.0 } else { 0.75 } * brevity(extra);
    let mut reason = format!("{want} of {} mood words are {mood}", pos + neg);
    if !named {
        reason.push_str(&format!("; does not name the {topic}"));
    }
    if extra > 0 {
        reason.push_str(&format!("; {extra} word(s) too long"));
    }
    (score, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{all_tasks, flawed_answer, reference_answer, Flaw, TaskKind};
    use kiln_model::Rng;

    fn task(spec: TaskSpec) -> Task {
        Task {
            prompt: "p".into(),
            spec,
        }
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn golden_arithmetic() {
        let t = task(TaskSpec::Arithmetic { a: 3, b: 4 });
        let cases = [
            ("7", 1.0, "7 is right"),
            (" 7.", 1.0, "7 is right"),
            ("8", 0.375, "8 is wrong, 7 is right"),
            ("5", 0.25, "5 is wrong, 7 is right"),
            ("11", 0.0, "11 is wrong, 7 is right"),
            ("seven", 0.0, "no number"),
            ("", 0.0, "no number"),
            ("7 and 7", 2.0 / 3.0, "7 is right; 2 extra word(s)"),
            ("99999999999999999999999", 0.0, "is wrong"),
        ];
        for (reply, want, why) in cases {
            let j = judge(&t, reply);
            assert!(close(j.score, want), "{reply:?}: {} != {want}", j.score);
            assert!(j.reason.contains(why), "{reply:?}: {}", j.reason);
        }
    }

    #[test]
    fn golden_words() {
        let t = task(TaskSpec::Words {
            n: 4,
            topic: "sea".into(),
        });
        let cases = [
            ("the sea is deep", 1.0, "4 words, asked for 4"),
            ("the sea is deep.", 1.0, "4 words"),
            ("the sea is very deep", 0.5, "5 words"),
            ("sea", 0.25, "1 words"),
            ("  . ", 0.0, "empty"),
        ];
        for (reply, want, why) in cases {
            let j = judge(&t, reply);
            assert!(close(j.score, want), "{reply:?}: {} != {want}", j.score);
            assert!(j.reason.contains(why), "{reply:?}: {}", j.reason);
        }
    }

    #[test]
    fn golden_list() {
        let t = task(TaskSpec::List {
            k: 3,
            category: "fruits".into(),
        });
        let cases = [
            (
                "apple, pear, plum",
                1.0,
                "3 items, asked for 3; 3 distinct fruits",
            ),
            ("Apple, pear and plum.", 1.0, "3 distinct"),
            ("apple, pear", 0.5, "2 items"),
            ("apple, lion, plum", 2.0 / 3.0, "2 distinct fruits"),
            ("apple, apple, apple", 1.0 / 3.0, "1 distinct"),
            ("apple, pear, plum, fig, grape", 1.0 / 3.0, "5 items"),
            ("", 0.0, "no items"),
        ];
        for (reply, want, why) in cases {
            let j = judge(&t, reply);
            assert!(close(j.score, want), "{reply:?}: {} != {want}", j.score);
            assert!(j.reason.contains(why), "{reply:?}: {}", j.reason);
        }
    }

    #[test]
    fn golden_sentiment() {
        let happy = task(TaskSpec::Sentiment {
            happy: true,
            topic: "sun".into(),
        });
        let sad = task(TaskSpec::Sentiment {
            happy: false,
            topic: "sun".into(),
        });
        let cases = [
            (
                &happy,
                "the sun is warm and bright",
                1.0,
                "2 of 2 mood words are happy",
            ),
            (&happy, "the sun is warm and cold", 0.5, "1 of 2"),
            (&happy, "the sun is dark and cold", 0.0, "0 of 2"),
            (
                &sad,
                "the sun is dark and cold",
                1.0,
                "2 of 2 mood words are sad",
            ),
            (&happy, "the moon is warm", 0.75, "does not name the sun"),
            (&happy, "the sun is a star", 0.0, "no mood words"),
            // 12 words: 4 too many -> brevity 1/2.
            (
                &happy,
                "the sun is warm and the sun is warm and so bright",
                0.5,
                "4 word(s) too long",
            ),
        ];
        for (t, reply, want, why) in cases {
            let j = judge(t, reply);
            assert!(close(j.score, want), "{reply:?}: {} != {want}", j.score);
            assert!(j.reason.contains(why), "{reply:?}: {}", j.reason);
        }
    }

    #[test]
    fn every_reference_answer_scores_one_and_every_flawed_one_less() {
        let mut rng = Rng::new(11);
        let mut worst_flawed = [0f32; 4];
        for kind in TaskKind::ALL {
            for t in all_tasks(kind) {
                let good = reference_answer(&t, &mut rng);
                let j = judge(&t, &good);
                assert_eq!(j.score, 1.0, "{}: {good:?}: {}", t.prompt, j.reason);
                for _ in 0..3 {
                    let (bad, flaw) = flawed_answer(&t, &mut rng);
                    let s = score(&t, &bad);
                    assert!(s <= 0.75, "{}: {bad:?} ({flaw:?}) scored {s}", t.prompt);
                    if flaw == Flaw::Rambling {
                        assert!(s <= 0.5, "{}: rambling {bad:?} scored {s}", t.prompt);
                    }
                    let k = kind as usize;
                    worst_flawed[k] = worst_flawed[k].max(s);
                }
            }
        }
        assert!(worst_flawed.iter().all(|&s| s < 1.0), "{worst_flawed:?}");
    }

    proptest::proptest! {
        #[test]
        fn scores_stay_in_unit_interval(reply in "[a-z0-9 ,.;\n]{0,80}", which in 0usize..1000) {
            let kinds: Vec<Task> = TaskKind::ALL.iter().flat_map(|&k| all_tasks(k)).collect();
            let t = &kinds[which % kinds.len()];
            let j = judge(t, &reply);
            proptest::prop_assert!((0.0..=1.0).contains(&j.score), "{} {}", j.score, j.reason);
            proptest::prop_assert!(!j.reason.is_empty());
        }

        #[test]
        fn a_reference_answer_beats_its_flawed_variants(seed in 0u64..10_000, which in 0usize..1000) {
            let kinds: Vec<Task> = TaskKind::ALL.iter().flat_map(|&k| all_tasks(k)).collect();
            let t = &kinds[which % kinds.len()];
            let mut rng = Rng::new(seed);
            let good = reference_answer(t, &mut rng);
            let (bad, _) = flawed_answer(t, &mut rng);
            proptest::prop_assert_eq!(score(t, &good), 1.0);
            proptest::prop_assert!(score(t, &bad) < score(t, &good));
        }
    }
}
