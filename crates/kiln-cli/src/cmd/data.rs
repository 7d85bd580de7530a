//! `kiln data ...`.

#[derive(clap::Subcommand)]
pub enum Command {
    /// Tokenize documents into llm.c-format token shards.
    Tokenize(super::data_tokenize::Args),
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Tokenize(a) => super::data_tokenize::run(a),
    }
}
