//! `kiln data tokenize`: documents -> llm.c token shards (owned by the tokenizer work).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`kiln data tokenize` is not implemented yet")
}
