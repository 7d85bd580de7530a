//! `kiln`: the command-line entry point. Each subcommand lives in its own
//! module under `cmd/` with its clap arguments and a `run` function; this file
//! only dispatches and maps errors to exit codes.

mod cmd;

use clap::{Parser, Subcommand};

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
    /// List and check backend / expert plugins.
    #[command(subcommand)]
    Plugins(cmd::plugins::Command),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pipeline(a) => cmd::pipeline::run(a),
        Command::Pretrain(a) => cmd::pretrain::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Tokenizer(c) => cmd::tokenizer::run(c),
        Command::Data(c) => cmd::data::run(c),
        Command::Plugins(c) => cmd::plugins::run(c),
    };
    if let Err(err) = result {
        // One clear message, the chain of causes, exit code 2 (the CLI contract).
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(2);
    }
}
