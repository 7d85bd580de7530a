//! `kiln chat`: talk to a checkpoint. Reads one user turn per line from
//! stdin, streams the reply token by token, keeps the conversation, and
//! drops the oldest turns (saying so on stderr) when the next prompt would
//! not leave room for a reply in the model's context.
//!
//! On a terminal it shows `you>` prompts; with piped stdin it prints each
//! reply followed by a newline and nothing else on stdout, so scripts can
//! read it. `/reset` starts a new conversation, `/quit` (or end of input)
//! ends the session.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln_abi::BackendBox;
use kiln_model::{Gpt, SampleOptions};
use kiln_tokenizer::{ChatTemplate, Message, Role, Tokenizer};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (model.safetensors + config.json).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A PEFT LoRA adapter (e.g. a LoRA run's OUT/adapter/) to run on top
    /// of the checkpoint, unmerged.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Tokenizer file with the chat special tokens (default:
    /// CHECKPOINT/tokenizer.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// System message at the start of the conversation.
    #[arg(long)]
    system: Option<String>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    /// Longest reply in tokens (also the room kept free in the context).
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Seed of the first reply; reply n uses seed + n.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    backend: crate::backend::BackendArg,
}

/// The model, its tokenizer and the conversation so far.
struct Session {
    be: BackendBox,
    model: Gpt,
    tok: Tokenizer,
    template: ChatTemplate,
    system: Option<Message>,
    /// User and assistant messages, oldest first.
    turns: Vec<Message>,
    opts: SampleOptions,
    replies: u64,
}

enum Prompt {
    /// Ids to generate from, and how many old messages were dropped.
    Ready(Vec<u32>, usize),
    /// Even the newest message alone leaves no room for a reply.
    TooLong { tokens: usize },
}

impl Session {
    fn load(args: &Args) -> Result<Session> {
        let tok_path = args
            .tokenizer
            .clone()
            .unwrap_or_else(|| args.checkpoint.join("tokenizer.json"));
        if !tok_path.is_file() {
            bail!(
                "no tokenizer at {}; pass --tokenizer FILE (the tokenizer the model was trained with)",
                tok_path.display()
            );
        }
        let tok = kiln_tokenizer::formats::load(&tok_path)
            .with_context(|| format!("tokenizer {}", tok_path.display()))?;
        // The model's own chat template when its directory names one.
        let template = ChatTemplate::for_model_dir(&args.checkpoint, &tok)
            .with_context(|| format!("tokenizer {}", tok_path.display()))?;
        let mut be = crate::backend::open(&args.backend, args.threads)?;
        let model = super::lora_args::load_inference_model(
            &mut be,
            &args.checkpoint,
            args.adapter.as_deref(),
        )?;
        if tok.vocab_size() > model.config.vocab_size {
            bail!(
                "tokenizer {} has {} tokens but the model in {} only {}; use the tokenizer the model was trained with",
                tok_path.display(),
                tok.vocab_size(),
                args.checkpoint.display(),
                model.config.vocab_size
            );
        }
        if args.max_new_tokens == 0 || args.max_new_tokens >= model.config.max_seq_len {
            bail!(
                "--max-new-tokens must be between 1 and {} (the model's context is {} tokens)",
                model.config.max_seq_len - 1,
                model.config.max_seq_len
            );
        }
        let stop = template.end_id();
        Ok(Session {
            be,
            model,
            template,
            system: args.system.clone().map(Message::system),
            turns: Vec::new(),
            opts: SampleOptions {
                max_new_tokens: args.max_new_tokens,
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
                seed: args.seed,
                stop_token: Some(stop),
            },
            tok,
            replies: 0,
        })
    }

    fn conversation(&self, from: usize) -> Vec<Message> {
        self.system
            .iter()
            .chain(&self.turns[from..])
            .cloned()
            .collect()
    }

    /// The prompt for the next reply, dropping the oldest messages until
    /// it leaves `max_new_tokens` free (the newest user message is kept).
    fn prompt(&self) -> Result<Prompt> {
        let limit = self.model.config.max_seq_len - self.opts.max_new_tokens;
        let mut from = 0;
        loop {
            let ids = self
                .template
                .encode_prompt(&self.tok, &self.conversation(from))?;
            if ids.len() <= limit {
                return Ok(Prompt::Ready(ids, from));
            }
            if from + 1 >= self.turns.len() {
                return Ok(Prompt::TooLong { tokens: ids.len() });
            }
            from += 1;
            // Start at a user message: a reply without its question misleads.
            while from + 1 < self.turns.len() && self.turns[from].role != Role::User {
                from += 1;
            }
        }
    }

    /// Generates and streams one reply to `out`; returns its text.
    fn reply(&mut self, prompt: &[u32], out: &mut impl Write) -> Result<String> {
        let opts = SampleOptions {
            seed: self.opts.seed.wrapping_add(self.replies),
            ..self.opts.clone()
        };
        self.replies += 1;
        let specials: Vec<u32> = self
            .tok
            .special_tokens()
            .iter()
            .map(|(_, id)| *id)
            .collect();
        let mut decoder = self.tok.stream_decoder();
        let mut text = String::new();
        let mut write_err = None;
        self.model
            .generate_with(&mut self.be, prompt, &opts, |id| {
                // <|end|>, a role marker or <|endoftext|> ends the turn.
                if specials.contains(&id) {
                    return false;
                }
                let piece = decoder.step(id).unwrap_or_default();
                text.push_str(&piece);
                if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                    write_err = Some(e);
                    return false;
                }
                true
            })?;
        if let Some(e) = write_err {
            return Err(e).context("writing the reply");
        }
        let tail = decoder.finish();
        out.write_all(tail.as_bytes())?;
        text.push_str(&tail);
        Ok(text)
    }
}

pub fn run(args: Args) -> Result<()> {
    let mut session = Session::load(&args)?;
    let interactive = std::io::stdin().is_terminal();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if interactive {
        eprintln!(
            "kiln chat: {} (context {} tokens). /reset starts over, /quit or Ctrl-D ends.",
            args.checkpoint.display(),
            session.model.config.max_seq_len
        );
    }
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            write!(out, "you> ")?;
            out.flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let text = line.trim();
        match text {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                session.turns.clear();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        session.turns.push(Message::user(text));
        let (prompt, dropped) = match session.prompt()? {
            Prompt::Ready(ids, dropped) => (ids, dropped),
            Prompt::TooLong { tokens } => {
                session.turns.pop();
                eprintln!(
                    "(that message is {tokens} tokens with the chat markup; with {} kept free for the reply it does not fit the model's {}-token context. Say something shorter.)",
                    session.opts.max_new_tokens, session.model.config.max_seq_len
                );
                continue;
            }
        };
        if dropped > 0 {
            session.turns.drain(..dropped);
            eprintln!(
                "(context full: dropped the oldest {dropped} message(s) of the conversation)"
            );
        }
        if interactive {
            write!(out, "kiln> ")?;
        }
        let reply = session.reply(&prompt, &mut out)?;
        writeln!(out)?;
        out.flush()?;
        session.turns.push(Message::assistant(reply));
    }
    Ok(())
}
