//! `kiln tokenizer ...`.

#[derive(clap::Subcommand)]
pub enum Command {
    /// Placeholder until the subcommands land.
    Todo,
}

pub fn run(_cmd: Command) -> anyhow::Result<()> {
    anyhow::bail!("`kiln tokenizer` is not implemented yet")
}
