//! `kiln grpo` (being written).

use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("kiln grpo is not built yet")
}
