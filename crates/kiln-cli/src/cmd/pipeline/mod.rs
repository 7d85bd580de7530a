//! `kiln pipeline`: the main job. Runs every stage on the embedded corpus
//! (or `--input`): curate -> train tokenizer -> tokenize -> pretrain ->
//! evaluate -> embedded chat tasks -> SFT -> preference pairs -> reward
//! model -> DPO and PPO -> judge every model -> report.html, and writes
//! `OUT/summary.json` with each stage's headline figures.
//!
//! Stages are resumable: each one that finishes writes a marker under
//! `OUT/stages/` holding a fingerprint of its inputs and settings (which
//! includes everything upstream); a rerun skips a stage whose marker
//! matches, and pretraining resumes from its last checkpoint. `--force`
//! reruns everything. The post-training stages live in `align.rs`, the
//! judging in `evaluate.rs`, the markers in `stage.rs`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use kiln_data::{CurateConfig, CurateOptions};
use kiln_model::SampleOptions;
use kiln_tokenizer::SpecialPolicy;
use kiln_train::checkpoint::latest_checkpoint;
use kiln_train::progress::Progress;
use kiln_train::{Init, TrainConfig, Trainer};
use serde_json::{json, Value};

mod align;
mod config;
mod evaluate;
mod reward_audit;
mod rounds;
mod stage;

use config::PipelineConfig;

use stage::{
    count_tokens, fingerprint_files, load_tokenizer, stage, unigram_entropy, write_if_absent,
};

/// The raw corpus that ships inside the binary (see data/corpus/NOTICE).
const EMBEDDED_CORPUS: &[u8] = include_bytes!("../../../../../data/corpus/raw.jsonl.zst");
/// Evaluation passages the curated corpus is decontaminated against.
const EMBEDDED_EVAL: &[u8] = include_bytes!("../../../../../data/eval/passages.jsonl");

/// Prompts whose continuations the summary shows.
const PROMPTS: [&str; 4] = [
    "In the beginning",
    "The king said",
    "HACKER, n.",
    "To be, or not",
];

#[derive(clap::Args)]
pub struct Args {
    /// Run directory: every stage's outputs and summary.json.
    #[arg(long, default_value = "runs/pipeline")]
    out: PathBuf,
    /// Raw corpus files or directories (.txt, .jsonl, .jsonl.gz/.zst);
    /// default: the embedded corpus.
    #[arg(long)]
    input: Vec<PathBuf>,
    /// A smaller, shorter run (about a minute) for smoke tests.
    #[arg(long)]
    quick: bool,
    /// Rerun every stage even when its outputs are up to date.
    #[arg(long)]
    force: bool,
    /// TOML settings layered over the defaults: `[pretrain]`, `[align]`,
    /// `[align.sft]`, `[align.reward]`, `[align.dpo]`, `[align.ppo]`.
    /// Only the keys named change; unknown keys are refused.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the settings this run would use (defaults plus --config) as
    /// TOML, and exit.
    #[arg(long)]
    print_config: bool,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Every stage runs on this backend.
    #[command(flatten)]
    backend: crate::backend::BackendArg,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    // Every stage below (and the commands it runs) opens this backend.
    crate::backend::select(&args.backend);
    let settings = PipelineConfig::load(args.quick, args.config.as_deref())?;
    if args.print_config {
        print!("{}", settings.to_toml());
        return Ok(());
    }
    let plan = &settings.pretrain;
    let out = args.out.clone();
    // One pipeline per run directory; each stage also locks its own.
    let _lock = kiln_stdx::lock::DirLock::claim(&out)
        .with_context(|| format!("{}: cannot claim the run directory", out.display()))?;
    std::fs::create_dir_all(out.join("configs"))
        .and_then(|()| std::fs::create_dir_all(out.join("stages")))
        .with_context(|| format!("{}: cannot create the run directory", out.display()))?;
    let settings_path = out.join("configs").join("pipeline.toml");
    kiln_stdx::fs::write_atomic(&settings_path, settings.to_toml().as_bytes())
        .with_context(|| format!("{}: cannot write", settings_path.display()))?;
    eprintln!("kiln pipeline -> {}", out.display());
    let mut summary = serde_json::Map::new();

    // 1. The raw corpus and the evaluation passages to decontaminate against.
    let eval_dir = out.join("eval");
    let eval_passages = eval_dir.join("passages.jsonl");
    write_if_absent(&eval_passages, EMBEDDED_EVAL)?;
    let inputs = if args.input.is_empty() {
        let raw = out.join("raw").join("embedded.jsonl.zst");
        write_if_absent(&raw, EMBEDDED_CORPUS)?;
        vec![raw]
    } else {
        args.input.clone()
    };
    let input_fp = fingerprint_files(&inputs)?;

    // 2. Curate.
    let curated = out.join("curated");
    let fp = input_fp.clone();
    let curate_figures = stage(&out, "curate", &fp, args.force, || {
        let opts = CurateOptions {
            inputs: inputs.clone(),
            output: curated.clone(),
            config: {
                let mut c = CurateConfig::default();
                c.decontamination.eval = vec![eval_passages.clone()];
                c
            },
            strict: false,
            shard: None,
        };
        let report = kiln_data::curate(&opts, &kiln_data::Progress::default())
            .context("curating the corpus")?;
        let stats = report
            .stats
            .context("curation produced no totals (a shard is missing)")?;
        eprintln!("{}", stats.table());
        Ok(json!({
            "input_docs": stats.input_docs,
            "input_bytes": stats.input_bytes,
            "kept_docs": stats.kept_docs,
            "kept_bytes": stats.kept_bytes,
            "removed_docs_by_filter": stats.filters.iter()
                .map(|(k, v)| (k.clone(), json!(v.docs_removed)))
                .collect::<serde_json::Map<_, _>>(),
        }))
    })?;
    summary.insert("curate".into(), curate_figures);
    let kept = curated.join("kept");

    // 3. Tokenizer.
    let tokenizer_path = out.join("tokenizer.json");
    let fp = format!("{input_fp}:{}", plan.vocab_size);
    let tok_figures = stage(&out, "tokenizer", &fp, args.force, || {
        super::tokenizer::run(super::tokenizer::Command::Train(
            super::tokenizer::TrainArgs {
                input: vec![kept.clone()],
                vocab_size: plan.vocab_size,
                output: tokenizer_path.clone(),
                pattern: "o200k".into(),
                // Chat roles and end of turn from the start, so post-training
                // needs no new embedding rows.
                special: kiln_tokenizer::chat::default_special_tokens(),
                min_frequency: 2,
                replace_invalid_utf8: false,
            },
        ))?;
        Ok(json!({ "vocab_size": load_tokenizer(&tokenizer_path)?.vocab_size() }))
    })?;
    summary.insert("tokenizer".into(), tok_figures);
    let tokenizer = load_tokenizer(&tokenizer_path)?;

    // 4. Tokenize into train / val shards.
    let tokens_dir = out.join("tokens");
    let tokenize_figures = stage(&out, "tokenize", &fp, args.force, || {
        if tokens_dir.exists() {
            std::fs::remove_dir_all(&tokens_dir)?;
        }
        super::data_tokenize::run(super::data_tokenize::Args {
            tokenizer: tokenizer_path.clone(),
            input: vec![kept.clone()],
            output: tokens_dir.clone(),
            shard_tokens: 50_000_000,
            val_fraction: 0.02,
            replace_invalid_utf8: false,
        })?;
        Ok(json!({
            "train_tokens": count_tokens(&tokens_dir, "train_")?,
            "val_tokens": count_tokens(&tokens_dir, "val_")?,
        }))
    })?;
    summary.insert("tokenize".into(), tokenize_figures);
    let train_shard = tokens_dir.join("train_000000.bin");
    let val_shard = tokens_dir.join("val_000000.bin");

    // 5. Pretrain (resumes from its own checkpoints).
    let run_dir = out.join("pretrain");
    let mut config = TrainConfig::with_model(&plan.model, tokenizer.vocab_size(), plan.seq_len);
    config.steps = plan.steps;
    config.batch_size = plan.batch_size;
    config.lr = plan.lr;
    config.min_lr = plan.lr / 10.0;
    config.warmup = plan.warmup;
    config.checkpoint_every = (plan.steps / 4).max(1);
    config.precision = plan.precision.clone();
    let fp = format!(
        "{input_fp}:{}",
        serde_json::to_string(plan).expect("plan serialises")
    );
    let pre_figures = stage(&out, "pretrain", &fp, args.force, || {
        let be = crate::backend::open(&args.backend, args.threads)?;
        let t0 = Instant::now();
        let mut trainer = match latest_checkpoint(&run_dir)? {
            Some((step, dir)) if !args.force => {
                eprintln!("pretrain: resuming from step {step}");
                Trainer::resume(be, config.clone(), &train_shard, &run_dir, &dir)?
            }
            _ => {
                if run_dir.exists() {
                    std::fs::remove_dir_all(&run_dir)?;
                }
                Trainer::start(be, config.clone(), &train_shard, &run_dir, Init::Preset)?
            }
        };
        let params = trainer.model_config().num_params();
        eprintln!(
            "pretrain: {} model, {params} parameters, {} steps of {} tokens",
            plan.model,
            plan.steps,
            plan.batch_size * plan.seq_len
        );
        let mut progress = Progress::new(trainer.step_count(), config.steps, config.log_every);
        let result = trainer.run(&mut progress)?;
        progress.finish();
        Ok(json!({
            "model": plan.model,
            "parameters": params,
            "steps": result.steps,
            // For the report's "tokens trained".
            "tokens_per_step": config.tokens_per_step(),
            "final_train_loss": result.last_loss,
            "checkpoint": result.checkpoint,
            "wall_s": t0.elapsed().as_secs_f64(),
        }))
    })?;
    summary.insert("pretrain".into(), pre_figures);

    // 6. Evaluate and sample (cheap: always rerun).
    let (_, ckpt) = latest_checkpoint(&run_dir)?.context("pretraining left no checkpoint")?;
    let mut be = crate::backend::open(&args.backend, args.threads)?;
    let mut model = kiln_model::Gpt::load_pretrained(&mut be, &ckpt)?;
    let eval = kiln_train::eval::evaluate(&mut be, &mut model, &val_shard, plan.seq_len, 16)?;
    let unigram = unigram_entropy(&train_shard)?;
    eprintln!(
        "eval: held-out loss {:.3} nats (ppl {:.1}) over {} tokens; unigram entropy {unigram:.3}",
        eval.loss, eval.ppl, eval.tokens
    );
    summary.insert(
        "eval".into(),
        json!({ "val_loss": eval.loss, "val_ppl": eval.ppl, "val_tokens": eval.tokens,
                "unigram_entropy": unigram }),
    );

    let mut samples = Vec::new();
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let ids = tokenizer.encode(prompt, &SpecialPolicy::all_text())?;
        let opts = SampleOptions {
            max_new_tokens: plan.sample_tokens,
            temperature: 0.8,
            top_k: Some(40),
            top_p: None,
            seed: 1000 + i as u64,
            stop_token: tokenizer.special_id(kiln_tokenizer::ENDOFTEXT),
        };
        let new = model.generate(&mut be, &ids, &opts)?;
        let text = tokenizer.decode_lossy(&new)?;
        println!("--- {prompt}{text}");
        samples.push(json!({ "prompt": prompt, "completion": text }));
    }
    summary.insert("samples".into(), Value::Array(samples));
    model.release(&mut be)?;

    // 7. Post-training: SFT, preference pairs, reward model, DPO, PPO.
    let align_plan = &settings.align;
    let paths = align::AlignPaths {
        out: out.clone(),
        tokenizer: tokenizer_path.clone(),
        pretrained: ckpt.clone(),
    };
    let aligned_fp = align::run(
        &paths,
        align_plan,
        &fp,
        args.threads,
        args.force,
        &mut summary,
    )?;

    // 8. Judge every stage's model on the held-out tasks.
    let eval_tasks = evaluate::read_tasks(&out.join("tasks").join("eval.jsonl"))?;
    let candidates = [
        evaluate::Candidate {
            stage: "pretrain".into(),
            dir: ckpt.clone(),
        },
        evaluate::Candidate {
            stage: "sft".into(),
            dir: paths.model("sft"),
        },
        evaluate::Candidate {
            stage: "dpo".into(),
            dir: paths.model("dpo"),
        },
    ];
    let mut candidates = Vec::from(candidates);
    // Earlier RLHF rounds' PPO models, so the report shows what each round
    // added; the last round's is `ppo`.
    for (stage, dir) in rounds::earlier_ppo_models(&out, align_plan.rlhf_rounds) {
        candidates.push(evaluate::Candidate { stage, dir });
    }
    candidates.push(evaluate::Candidate {
        stage: "ppo".into(),
        dir: paths.model("ppo"),
    });
    let judge_fp = format!("{aligned_fp}|samples:{}", align_plan.eval_samples);
    let judged = stage(&out, "judge", &judge_fp, args.force, || {
        evaluate::judge_models(
            &out,
            &candidates,
            &eval_tasks,
            align_plan.eval_samples,
            &tokenizer_path,
            align_plan.max_new_tokens,
            args.threads,
        )
    })?;
    summary.insert("judge".into(), judged);
    summary.insert("wall_s".into(), json!(started.elapsed().as_secs_f64()));

    let path = out.join("summary.json");
    let text = serde_json::to_string_pretty(&Value::Object(summary))?;
    kiln_stdx::fs::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    // 9. The report.
    let report = kiln_report::write_report(&out).context("writing the report")?;
    eprintln!("report: {}", report.display());
    eprintln!(
        "done in {:.0}s; figures in {}",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}
