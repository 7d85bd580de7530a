//! `kiln pretrain`.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`kiln pretrain` is not implemented yet")
}
