//! `kiln plugins ...`.

#[derive(clap::Subcommand)]
pub enum Command {
    /// Placeholder until the subcommands land.
    Todo,
}

pub fn run(_cmd: Command) -> anyhow::Result<()> {
    anyhow::bail!("`kiln plugins` is not implemented yet")
}
