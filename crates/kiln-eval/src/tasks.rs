//! The embedded chat tasks: short prompts with short, checkable answers,
//! sized for a model of a few million parameters (every prompt and answer
//! is at most ~24 tokens).
//!
//! Four kinds, each with a programmatic judge ([`crate::judge`]):
//! - arithmetic: "What is 3 + 4?" -> "7" (single-digit operands);
//! - words: "Describe the sea in exactly 4 words." -> "the sea is deep";
//! - list: "List 3 fruits." -> "fig, plum, pear" (then stop);
//! - sentiment: "Write a happy sentence about the sun." -> "the sun is warm
//!   and bright" (judged by a lexicon).
//!
//! Good answers are templated so a tiny model can learn them by imitation.
//! SFT data is deliberately of mixed quality ([`sft_examples`]): the flawed
//! answers are wrong in ways the judge sees and a model can learn to avoid
//! (wrong sum, wrong length, wrong category, wrong sentiment, rambling on
//! without stopping), so the SFT policy is mediocre and preference methods
//! have room to improve it. Train and eval prompts are disjoint (split by a
//! hash of the prompt text). Everything is deterministic from the seed.

use kiln_model::Rng;
use kiln_tokenizer::Message;
use serde::{Deserialize, Serialize};

/// Topics for the words and sentiment tasks (common words in the
/// pretraining text, so most are one token).
pub const TOPICS: &[&str] = &[
    "sea", "sun", "moon", "king", "queen", "river", "garden", "city", "house", "horse", "tree",
    "field", "mountain", "bird", "child", "winter", "summer", "road", "ship", "night", "morning",
    "forest", "village", "star", "wind", "rain", "door", "bread", "song", "friend",
];

/// Neutral adjectives used by the words task.
pub const NEUTRAL_WORDS: &[&str] = &[
    "old", "great", "long", "wide", "still", "high", "deep", "small", "near", "quiet", "new",
];

/// Positive words: answers to happy prompts use these; the judge counts them.
pub const POSITIVE_WORDS: &[&str] = &[
    "good", "glad", "sweet", "fair", "bright", "warm", "kind", "merry", "gentle", "happy",
    "lovely", "joyful", "pleasant", "blessed",
];

/// Negative words: answers to sad prompts use these; the judge counts them.
pub const NEGATIVE_WORDS: &[&str] = &[
    "sad",
    "dark",
    "cold",
    "bitter",
    "cruel",
    "poor",
    "weary",
    "lonely",
    "sick",
    "evil",
    "grim",
    "wretched",
    "sorrowful",
    "dreary",
];

/// The answer-word lists of the list task (every item is one word).
pub const CATEGORIES: &[(&str, &[&str])] = &[
    (
        "fruits",
        &[
            "apple", "pear", "plum", "fig", "grape", "olive", "cherry", "peach", "lemon",
        ],
    ),
    (
        "animals",
        &[
            "lion", "sheep", "goat", "dog", "ox", "camel", "bear", "wolf", "fox",
        ],
    ),
    (
        "colours",
        &[
            "red", "blue", "green", "white", "black", "yellow", "purple", "brown",
        ],
    ),
    (
        "metals",
        &[
            "gold", "silver", "iron", "brass", "copper", "tin", "lead", "steel",
        ],
    ),
    (
        "birds",
        &[
            "dove", "eagle", "raven", "owl", "sparrow", "swan", "hawk", "crow",
        ],
    ),
    (
        "trees",
        &[
            "oak", "pine", "cedar", "palm", "willow", "elm", "ash", "fir",
        ],
    ),
];

/// Operands of the arithmetic task.
pub const OPERANDS: std::ops::RangeInclusive<u32> = 1..=9;
/// Word counts asked for by the words task.
pub const WORD_COUNTS: std::ops::RangeInclusive<usize> = 2..=6;
/// Item counts asked for by the list task.
pub const ITEM_COUNTS: std::ops::RangeInclusive<usize> = 2..=5;

/// The kind of a task (for per-kind scores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Arithmetic,
    Words,
    List,
    Sentiment,
}

impl TaskKind {
    pub const ALL: [TaskKind; 4] = [
        TaskKind::Arithmetic,
        TaskKind::Words,
        TaskKind::List,
        TaskKind::Sentiment,
    ];
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Arithmetic => "arithmetic",
            TaskKind::Words => "words",
            TaskKind::List => "list",
            TaskKind::Sentiment => "sentiment",
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a task asks for: everything the judge needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskSpec {
    /// Answer `a + b` (the first number of the reply counts).
    Arithmetic { a: u32, b: u32 },
    /// Say something about `topic` in exactly `n` words.
    Words { n: usize, topic: String },
    /// Name `k` distinct items of `category`, then stop.
    List { k: usize, category: String },
    /// A short happy (or sad) sentence about `topic`.
    Sentiment { happy: bool, topic: String },
}

impl TaskSpec {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskSpec::Arithmetic { .. } => TaskKind::Arithmetic,
            TaskSpec::Words { .. } => TaskKind::Words,
            TaskSpec::List { .. } => TaskKind::List,
            TaskSpec::Sentiment { .. } => TaskKind::Sentiment,
        }
    }
}

/// One task: the user's prompt and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Task {
    pub prompt: String,
    pub spec: TaskSpec,
}

impl Task {
    pub fn kind(&self) -> TaskKind {
        self.spec.kind()
    }
    /// The conversation to answer: one user message.
    pub fn messages(&self) -> Vec<Message> {
        vec![Message::user(self.prompt.clone())]
    }
}

/// Which prompts: training (SFT data, preference pairs, RL) or evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Eval,
}

/// FNV-1a: a fixed, platform-independent hash for the train/eval split.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One prompt in five (by hash) is held out for evaluation.
pub fn split_of(prompt: &str) -> Split {
    if fnv1a(prompt).is_multiple_of(5) {
        Split::Eval
    } else {
        Split::Train
    }
}

/// Every task of one kind (all prompt phrasings), in a fixed order.
pub fn all_tasks(kind: TaskKind) -> Vec<Task> {
    let mut out = Vec::new();
    let mut push = |prompt: String, spec: TaskSpec| out.push(Task { prompt, spec });
    match kind {
        TaskKind::Arithmetic => {
            for a in OPERANDS {
                for b in OPERANDS {
                    let spec = TaskSpec::Arithmetic { a, b };
                    for p in [
                        format!("What is {a} + {b}?"),
                        format!("Add {a} and {b}."),
                        format!("Compute {a} plus {b}."),
                    ] {
                        push(p, spec.clone());
                    }
                }
            }
        }
        TaskKind::Words => {
            for &topic in TOPICS {
                for n in WORD_COUNTS {
                    let spec = TaskSpec::Words {
                        n,
                        topic: topic.into(),
                    };
                    for p in [
                        format!("Describe the {topic} in exactly {n} words."),
                        format!("Use exactly {n} words about the {topic}."),
                    ] {
                        push(p, spec.clone());
                    }
                }
            }
        }
        TaskKind::List => {
            for &(category, _) in CATEGORIES {
                for k in ITEM_COUNTS {
                    let spec = TaskSpec::List {
                        k,
                        category: category.into(),
                    };
                    for p in [
                        format!("List {k} {category}."),
                        format!("Name {k} {category}, then stop."),
                        format!("Give me {k} {category}."),
                    ] {
                        push(p, spec.clone());
                    }
                }
            }
        }
        TaskKind::Sentiment => {
            for &topic in TOPICS {
                for happy in [true, false] {
                    let mood = if happy { "happy" } else { "sad" };
                    let spec = TaskSpec::Sentiment {
                        happy,
                        topic: topic.into(),
                    };
                    for p in [
                        format!("Write a {mood} sentence about the {topic}."),
                        format!("Say something {mood} about the {topic}."),
                    ] {
                        push(p, spec.clone());
                    }
                }
            }
        }
    }
    out
}

/// The tasks of one kind in one split.
pub fn split_tasks(kind: TaskKind, split: Split) -> Vec<Task> {
    all_tasks(kind)
        .into_iter()
        .filter(|t| split_of(&t.prompt) == split)
        .collect()
}

/// Uniform integer in `0..n` (n > 0).
pub(crate) fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

pub(crate) fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[below(rng, items.len())]
}

fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, below(rng, i + 1));
    }
}

/// `n` tasks of `split`, kinds in turn (arithmetic, words, list,
/// sentiment, ...). Each kind's prompts are shuffled by the seed and used
/// in that order, repeating only after all have been used.
pub fn tasks(split: Split, n: usize, seed: u64) -> Vec<Task> {
    let mut rng = Rng::new(seed);
    let mut pools: Vec<Vec<Task>> = TaskKind::ALL
        .iter()
        .map(|&k| {
            let mut pool = split_tasks(k, split);
            shuffle(&mut rng, &mut pool);
            pool
        })
        .collect();
    let mut next = [0usize; 4];
    (0..n)
        .map(|i| {
            let k = i % pools.len();
            let pool = &mut pools[k];
            let task = pool[next[k] % pool.len()].clone();
            next[k] += 1;
            task
        })
        .collect()
}

/// Training tasks (prompts never used by [`eval_tasks`]).
pub fn train_tasks(n: usize, seed: u64) -> Vec<Task> {
    tasks(Split::Train, n, seed)
}

/// Held-out evaluation tasks.
pub fn eval_tasks(n: usize, seed: u64) -> Vec<Task> {
    tasks(Split::Eval, n, seed)
}

fn category_items(category: &str) -> &'static [&'static str] {
    CATEGORIES
        .iter()
        .find(|(c, _)| *c == category)
        .map(|(_, items)| *items)
        .unwrap_or(&[])
}

/// `k` distinct items of `items` (at most all of them).
fn distinct(rng: &mut Rng, items: &[&str], k: usize) -> Vec<String> {
    let mut all: Vec<&str> = items.to_vec();
    shuffle(rng, &mut all);
    all.into_iter().take(k).map(str::to_string).collect()
}

/// A sentence of exactly `n` words (1..=8) about `topic`, from fixed frames.
fn words_answer(rng: &mut Rng, topic: &str, n: usize) -> String {
    let a = pick(rng, NEUTRAL_WORDS);
    let mut b = pick(rng, NEUTRAL_WORDS);
    if b == a {
        b = if *a == "old" { &"new" } else { &"old" };
    }
    match n {
        0 | 1 => topic.to_string(),
        2 => format!("{a} {topic}"),
        3 => format!("the {a} {topic}"),
        4 => format!("the {topic} is {a}"),
        5 => format!("the {topic} is very {a}"),
        6 => format!("the {topic} is {a} and {b}"),
        7 => format!("the {topic} is very {a} and {b}"),
        _ => format!("the {topic} is very {a} and very {b}"),
    }
}

/// A short sentence about `topic` using two words of `lexicon`.
fn sentiment_answer(rng: &mut Rng, topic: &str, first: &[&str], second: &[&str]) -> String {
    let a = pick(rng, first);
    let mut b = pick(rng, second);
    if a == b {
        b = if second[0] == *a {
            &second[1]
        } else {
            &second[0]
        };
    }
    if below(rng, 2) == 0 {
        format!("the {topic} is {a} and {b}")
    } else {
        format!("the {a} {topic} is {b}")
    }
}

fn lexicon(happy: bool) -> (&'static [&'static str], &'static [&'static str]) {
    if happy {
        (POSITIVE_WORDS, NEGATIVE_WORDS)
    } else {
        (NEGATIVE_WORDS, POSITIVE_WORDS)
    }
}

/// A good answer (the judge gives it 1.0); varies with `rng` where the task
/// admits several (which items, which adjectives).
pub fn reference_answer(task: &Task, rng: &mut Rng) -> String {
    match &task.spec {
        TaskSpec::Arithmetic { a, b } => (a + b).to_string(),
        TaskSpec::Words { n, topic } => words_answer(rng, topic, *n),
        TaskSpec::List { k, category } => distinct(rng, category_items(category), *k).join(", "),
        TaskSpec::Sentiment { happy, topic } => {
            let (want, _) = lexicon(*happy);
            sentiment_answer(rng, topic, want, want)
        }
    }
}

/// How a flawed answer is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flaw {
    /// Arithmetic: off by 1 to 3.
    WrongSum,
    /// Words: 1 to 3 words too many or too few.
    WrongLength,
    /// List: 1 to 3 items too many or too few.
    WrongCount,
    /// List: items from another category.
    WrongCategory,
    /// Sentiment: the opposite mood's words.
    WrongSentiment,
    /// Sentiment: one word of each mood.
    MixedSentiment,
    /// The good answer, then more and more of the same: it does not stop.
    Rambling,
    /// The good answer cut short: fewer words or items, a sum's first
    /// digit, a sentence that stops before its mood words. Written pairs
    /// only (see [`truncated_answer`]); SFT data never has it.
    Truncated,
}

impl Flaw {
    pub fn name(self) -> &'static str {
        match self {
            Flaw::WrongSum => "wrong_sum",
            Flaw::WrongLength => "wrong_length",
            Flaw::WrongCount => "wrong_count",
            Flaw::WrongCategory => "wrong_category",
            Flaw::WrongSentiment => "wrong_sentiment",
            Flaw::MixedSentiment => "mixed_sentiment",
            Flaw::Rambling => "rambling",
            Flaw::Truncated => "truncated",
        }
    }
}

/// `x` moved by 1 to 3 in either direction, staying >= 1. Off by one is
/// included on purpose: a reward model that never sees it cannot tell a
/// list one item short from a right one, and PPO finds that blind spot.
fn off_by_one_to_three(rng: &mut Rng, x: usize) -> usize {
    let d = 1 + below(rng, 3);
    if x > d && below(rng, 2) == 0 {
        x - d
    } else {
        x + d
    }
}

/// Repeats `piece` joined by `sep` until it has at least `min_words` words.
fn ramble(
    first: &str,
    rng: &mut Rng,
    mut more: impl FnMut(&mut Rng) -> String,
    sep: &str,
) -> String {
    let target = 12 + below(rng, 5);
    let mut out = first.to_string();
    while out.split_whitespace().count() < target {
        out.push_str(sep);
        out.push_str(&more(rng));
    }
    out
}

/// A flawed answer and its flaw. The mix per kind favours flaws that are
/// easy to see (rambling, wrong category or mood) so that a small reward
/// model can rank them; wrong sums are the one flaw that needs arithmetic.
pub fn flawed_answer(task: &Task, rng: &mut Rng) -> (String, Flaw) {
    let roll = rng.next_f32();
    match &task.spec {
        TaskSpec::Arithmetic { a, b } => {
            let sum = (a + b) as usize;
            if roll < 0.4 {
                let d = 1 + below(rng, 3);
                let wrong = if sum > d && below(rng, 2) == 0 {
                    sum - d
                } else {
                    sum + d
                };
                (wrong.to_string(), Flaw::WrongSum)
            } else {
                let s = sum.to_string();
                let text = ramble(&s, rng, |r| (sum + below(r, 3)).to_string(), " and ");
                (text, Flaw::Rambling)
            }
        }
        TaskSpec::Words { n, topic } => {
            if roll < 0.5 {
                let m = off_by_one_to_three(rng, *n).min(8);
                (words_answer(rng, topic, m), Flaw::WrongLength)
            } else {
                let first = words_answer(rng, topic, *n);
                let text = ramble(&first, rng, |r| words_answer(r, topic, 6), " and ");
                (text, Flaw::Rambling)
            }
        }
        TaskSpec::List { k, category } => {
            let items = category_items(category);
            if roll < 1.0 / 3.0 {
                let m = off_by_one_to_three(rng, *k).min(items.len());
                (distinct(rng, items, m).join(", "), Flaw::WrongCount)
            } else if roll < 2.0 / 3.0 {
                let others: Vec<&str> = CATEGORIES
                    .iter()
                    .filter(|(c, _)| c != category)
                    .flat_map(|(_, i)| i.iter().copied())
                    .collect();
                (distinct(rng, &others, *k).join(", "), Flaw::WrongCategory)
            } else {
                let first = distinct(rng, items, *k).join(", ");
                let text = ramble(&first, rng, |r| pick(r, items).to_string(), ", ");
                (text, Flaw::Rambling)
            }
        }
        TaskSpec::Sentiment { happy, topic } => {
            let (want, other) = lexicon(*happy);
            if roll < 0.4 {
                (
                    sentiment_answer(rng, topic, other, other),
                    Flaw::WrongSentiment,
                )
            } else if roll < 0.6 {
                (
                    sentiment_answer(rng, topic, want, other),
                    Flaw::MixedSentiment,
                )
            } else {
                let first = sentiment_answer(rng, topic, want, want);
                let text = ramble(
                    &first,
                    rng,
                    |r| sentiment_answer(r, topic, want, want),
                    " and ",
                );
                (text, Flaw::Rambling)
            }
        }
    }
}

/// The reference answer cut short, or None where the task has nothing to
/// cut (a one-digit sum).
pub fn truncated_answer(task: &Task, rng: &mut Rng) -> Option<String> {
    let good = reference_answer(task, rng);
    match &task.spec {
        TaskSpec::Arithmetic { .. } => (good.len() > 1).then(|| good[..1].to_string()),
        TaskSpec::Words { .. } => {
            let w: Vec<&str> = good.split_whitespace().collect();
            let keep = 1 + below(rng, w.len() - 1);
            Some(w[..keep].join(" "))
        }
        TaskSpec::List { .. } => {
            let items: Vec<&str> = good.split(", ").collect();
            let keep = 1 + below(rng, items.len() - 1);
            Some(items[..keep].join(", "))
        }
        // Stops before the mood words: the subject alone.
        TaskSpec::Sentiment { topic, .. } => Some(if below(rng, 2) == 0 {
            format!("the {topic} is")
        } else {
            format!("the {topic}")
        }),
    }
}

/// One SFT chat built from a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftExample {
    pub task: Task,
    /// The user prompt and the assistant's answer.
    pub messages: Vec<Message>,
    /// None for a good answer, else how the answer is wrong.
    pub flaw: Option<Flaw>,
}

/// `n` SFT chats over the training prompts; a fraction `good_fraction` of
/// the answers (in expectation) are good, the rest flawed.
pub fn sft_examples(n: usize, seed: u64, good_fraction: f32) -> Vec<SftExample> {
    let mut rng = Rng::new(seed ^ 0x5f7d_a7a0);
    train_tasks(n, seed)
        .into_iter()
        .map(|task| {
            let (answer, flaw) = if rng.next_f32() < good_fraction {
                (reference_answer(&task, &mut rng), None)
            } else {
                let (a, f) = flawed_answer(&task, &mut rng);
                (a, Some(f))
            };
            SftExample {
                messages: vec![
                    Message::user(task.prompt.clone()),
                    Message::assistant(answer),
                ],
                task,
                flaw,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn train_and_eval_prompts_are_disjoint_and_cover_every_kind() {
        for kind in TaskKind::ALL {
            let train: HashSet<String> = split_tasks(kind, Split::Train)
                .into_iter()
                .map(|t| t.prompt)
                .collect();
            let eval: HashSet<String> = split_tasks(kind, Split::Eval)
                .into_iter()
                .map(|t| t.prompt)
                .collect();
            assert!(train.is_disjoint(&eval), "{kind}");
            let all = all_tasks(kind).len();
            assert_eq!(train.len() + eval.len(), all, "{kind}: prompts are unique");
            // Roughly one in five held out, and enough of both.
            assert!(
                eval.len() * 10 >= all && eval.len() * 10 <= all * 3,
                "{kind}: {} of {all}",
                eval.len()
            );
        }
        let ev: HashSet<String> = eval_tasks(200, 3).into_iter().map(|t| t.prompt).collect();
        assert!(train_tasks(2000, 3).iter().all(|t| !ev.contains(&t.prompt)));
    }

    #[test]
    fn tasks_are_deterministic_round_robin_and_use_all_prompts_before_repeating() {
        let a = train_tasks(40, 7);
        assert_eq!(a, train_tasks(40, 7));
        assert_ne!(a, train_tasks(40, 8));
        let kinds: Vec<TaskKind> = a.iter().take(8).map(Task::kind).collect();
        assert_eq!(kinds, [TaskKind::ALL, TaskKind::ALL].concat());
        let lists = split_tasks(TaskKind::List, Split::Eval).len();
        let got: HashSet<String> = eval_tasks(4 * lists, 1)
            .into_iter()
            .filter(|t| t.kind() == TaskKind::List)
            .map(|t| t.prompt)
            .collect();
        assert_eq!(got.len(), lists);
    }

    #[test]
    fn good_fraction_sets_the_share_of_good_answers() {
        let ex = sft_examples(2000, 5, 0.5);
        let good = ex.iter().filter(|e| e.flaw.is_none()).count();
        assert!((900..1100).contains(&good), "{good}");
        assert!(sft_examples(100, 5, 1.0).iter().all(|e| e.flaw.is_none()));
        assert!(sft_examples(100, 5, 0.0).iter().all(|e| e.flaw.is_some()));
        // Every flaw of every kind occurs.
        let flaws: HashSet<Flaw> = ex.iter().filter_map(|e| e.flaw).collect();
        assert_eq!(flaws.len(), 7, "{flaws:?}");
    }

    #[test]
    fn prompts_and_answers_are_short() {
        let mut rng = Rng::new(1);
        for kind in TaskKind::ALL {
            for t in all_tasks(kind) {
                assert!(t.prompt.split_whitespace().count() <= 9, "{}", t.prompt);
                let good = reference_answer(&t, &mut rng);
                assert!(good.split_whitespace().count() <= 8, "{good}");
                let (bad, _) = flawed_answer(&t, &mut rng);
                assert!(bad.split_whitespace().count() <= 24, "{bad}");
                assert_ne!(good, bad);
            }
        }
    }

    #[test]
    fn task_specs_serialise_with_a_kind_tag() {
        let t = &eval_tasks(1, 0)[0];
        let v = serde_json::to_value(t).unwrap();
        assert_eq!(v["spec"]["kind"], "arithmetic");
        let back: Task = serde_json::from_value(v).unwrap();
        assert_eq!(&back, t);
    }
}
