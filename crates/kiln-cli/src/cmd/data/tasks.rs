//! `kiln data tasks`: the embedded, verifiable chat tasks as files the
//! training commands read: `sft.jsonl` (chats with reference answers, for
//! `kiln sft`) and `prompts.jsonl` (training prompts, for `kiln ppo` /
//! `kiln grpo`). They come from the training split; `kiln judge` scores on
//! the held-out split, whose prompts never occur here.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use kiln_align::data::{write_chats, write_prompts, ChatExample, PromptExample};
use kiln_eval::tasks::{sft_examples, train_tasks};

#[derive(clap::Args)]
pub struct TasksArgs {
    /// Output directory (sft.jsonl, prompts.jsonl).
    #[arg(long)]
    pub out: PathBuf,
    /// SFT chats to write.
    #[arg(long, default_value_t = 600)]
    pub chats: usize,
    /// Training prompts to write.
    #[arg(long, default_value_t = 200)]
    pub prompts: usize,
    /// Share of SFT answers that are correct; the rest carry the flaws the
    /// pipeline's mixed-quality SFT data has (1 = all correct).
    #[arg(long, default_value_t = 1.0)]
    pub good_fraction: f32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(a: TasksArgs) -> Result<()> {
    ensure!(
        (0.0..=1.0).contains(&a.good_fraction),
        "--good-fraction must be between 0 and 1, got {}",
        a.good_fraction
    );
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let chats: Vec<ChatExample> = sft_examples(a.chats, a.seed, a.good_fraction)
        .into_iter()
        .map(|e| ChatExample {
            messages: e.messages,
        })
        .collect();
    let sft = a.out.join("sft.jsonl");
    write_chats(&sft, &chats)?;
    let prompts: Vec<PromptExample> = train_tasks(a.prompts, a.seed.wrapping_add(2))
        .iter()
        .map(|t| PromptExample {
            prompt: t.messages(),
        })
        .collect();
    let prompts_file = a.out.join("prompts.jsonl");
    write_prompts(&prompts_file, &prompts)?;
    println!(
        "wrote {} chats to {} and {} prompts to {}",
        chats.len(),
        sft.display(),
        prompts.len(),
        prompts_file.display()
    );
    Ok(())
}
