//! `kiln`: the command-line entry point. Each subcommand lives in its own
//! module under `cmd/` with its clap arguments and a `run` function; this file
//! only dispatches and maps errors to exit codes.

mod backend;
mod cmd;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// kiln builds GPT-style language models end to end.
#[derive(Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on the embedded default data (or a config).
    Pipeline(cmd::pipeline::Args),
    /// Pretrain a GPT-2-style model on token shards (next-token prediction).
    Pretrain(cmd::pretrain::Args),
    /// Evaluate a checkpoint's loss and perplexity on a token shard.
    Eval(cmd::eval::Args),
    /// Sample text from a checkpoint.
    Generate(cmd::generate::Args),
    /// Train, use and inspect byte-level BPE tokenizers.
    #[command(subcommand)]
    Tokenizer(cmd::tokenizer::Command),
    /// Curate, inspect and tokenize corpora.
    #[command(subcommand)]
    Data(cmd::data::Command),
    /// Supervised fine-tuning on chats (loss on assistant tokens only).
    Sft(cmd::sft::Cli),
    /// Train a reward model on preference pairs (Bradley-Terry).
    Reward(cmd::reward::Cli),
    /// Direct preference optimisation (DPO, IPO, hinge, robust, SimPO).
    Dpo(cmd::dpo::Cli),
    /// RLHF with PPO against a reward model or the task judge.
    Ppo(cmd::ppo::Args),
    /// GRPO: group-relative policy optimisation (reward model or verifiable rewards).
    Grpo(cmd::grpo::Args),
    /// Fold a LoRA adapter (PEFT directory) into its base model: a merged
    /// Hugging Face model directory.
    Merge(cmd::merge::Args),
    /// Chat interactively with a checkpoint (streaming output).
    Chat(cmd::chat::Args),
    /// Judge a chat model on the embedded held-out tasks (the pipeline's
    /// programmatic judge), as one JSON object.
    Judge(cmd::judge::Args),
    /// Write RUN_DIR/report.html: plots, tables and samples of a pipeline run.
    Report(cmd::report::Args),
    /// Write a model directory as a GGUF file for llama.cpp / ollama.
    Export(cmd::export::Args),
    /// Plan a parallel layout on paper: memory per GPU, step time and MFU of
    /// data x tensor x pipeline layouts for a model on N GPUs.
    Plan(cmd::plan::Args),
    /// List and check backend / expert plugins.
    #[command(subcommand)]
    Plugins(cmd::plugins::Command),
}

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let name = matches.subcommand_name().unwrap_or("?");
    // Only pretrain joins a multi-process launch; everything else refuses one.
    let joins_mpi = matches!(cli.command, Command::Pretrain(_));
    let result = cmd::launch::check(name, joins_mpi).and_then(|()| match cli.command {
        Command::Pipeline(a) => cmd::pipeline::run(a),
        Command::Pretrain(a) => cmd::pretrain::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Tokenizer(c) => cmd::tokenizer::run(c),
        Command::Data(c) => cmd::data::run(c),
        Command::Plugins(c) => cmd::plugins::run(c),
        Command::Sft(a) => cmd::sft::run(a),
        Command::Reward(a) => cmd::reward::run(a),
        Command::Dpo(a) => cmd::dpo::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Ppo(a) => cmd::ppo::run(a),
        Command::Grpo(a) => cmd::grpo::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Judge(a) => cmd::judge::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Export(a) => cmd::export::run(a),
    });
    if let Err(err) = result {
        // A reader that stopped reading (`kiln generate | head`): exit
        // quietly, as Unix tools do.
        let broken_pipe = err.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            std::process::exit(0);
        }
        // One clear message, the chain of causes, exit code 2 (the CLI contract).
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(2);
    }
}
