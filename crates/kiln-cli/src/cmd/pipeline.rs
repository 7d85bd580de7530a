//! `kiln pipeline`.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`kiln pipeline` is not implemented yet")
}
