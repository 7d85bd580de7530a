//! LoRA through the training loops on a Llama policy: SFT and DPO train
//! the adapters alone (the base weights do not change, bit for bit; the
//! optimizer holds state for the adapters only), and DPO's reference is the
//! policy with its adapters off: the same log-probs, bit for bit, as a
//! separately loaded base model, without loading one.

use kiln_abi::{BackendBox, BackendExt};
use kiln_align::data::EncodedPair;
use kiln_align::dpo::{lora_reference_logps, pair_logps, train, DpoConfig, RefSource};
use kiln_align::metrics::Progress;
use kiln_align::policy::{param_refs, Policy};
use kiln_align::sft::{train_sft, SftConfig};
use kiln_model::{Gpt, GptConfig, LlamaFamily, LoraConfig, LoraTarget};
use kiln_tokenizer::{chat, Message, Pattern, Tokenizer};

fn tokenizer() -> Tokenizer {
    let specials = chat::default_special_tokens();
    let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
    let corpus = [
        "What is the capital of France? Paris is the capital of France.",
        "Name a red fruit. An apple is a red fruit. Say hello. Hello there, friend!",
    ];
    kiln_tokenizer::train(&corpus, 300, Pattern::Gpt2, &refs, 0).unwrap()
}

fn llama(be: &mut BackendBox, vocab: usize, seed: u64) -> Gpt {
    let cfg = GptConfig::new_llama(LlamaFamily::Llama, vocab, 32, 2, 4, 2, 32, 48, false);
    Gpt::new(be, cfg, seed).unwrap()
}

fn lora(rank: usize) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f32,
        targets: LoraTarget::ALL.to_vec(),
    }
}

fn base_bits(be: &mut BackendBox, model: &Gpt) -> Vec<Vec<u32>> {
    model
        .read_params(be)
        .unwrap()
        .into_iter()
        .map(|v| v.into_iter().map(f32::to_bits).collect())
        .collect()
}

fn adapter_values(be: &mut BackendBox, model: &Gpt) -> Vec<Vec<f32>> {
    model
        .lora_params()
        .iter()
        .map(|p| be.download_f32(p.value).unwrap())
        .collect()
}

#[test]
fn lora_sft_trains_only_the_adapters_and_the_base_stays_bit_identical() {
    let mut be = kiln_tensor::cpu_backend(Some(2));
    let tok = tokenizer();
    let mut model = llama(&mut be, tok.vocab_size(), 3);
    // A random base at init scale (N(0, 0.02)) has near-constant logits
    // behind its frozen RMSNorm and lm_head; N(0, 0.2) weights give the
    // adapters a base that can express the chats.
    let params = model.params().to_vec();
    for (p, v) in params.iter().zip(model.read_params(&mut be).unwrap()) {
        if p.shape.len() == 2 {
            let v: Vec<f32> = v.iter().map(|x| 10.0 * x).collect();
            be.upload_f32(p.value, &v).unwrap();
        }
    }
    model.add_lora(&mut be, lora(4), 11).unwrap();
    let mut p = Policy::new(model, tok).unwrap();
    let refs = param_refs(&p.model);
    assert_eq!(
        refs.len(),
        2 * 2 * 7,
        "only A and B of 7 projections x 2 layers"
    );
    let base_before = base_bits(&mut be, &p.model);
    let adapters_before = adapter_values(&mut be, &p.model);
    let convs = [
        ("What is the capital of France?", "Paris is the capital."),
        ("Name a red fruit.", "An apple."),
        ("Say hello.", "Hello there, friend!"),
    ];
    let chats: Vec<_> = convs
        .iter()
        .map(|(q, a)| {
            p.template
                .encode(&p.tokenizer, &[Message::user(*q), Message::assistant(*a)])
                .unwrap()
        })
        .collect();
    let config = SftConfig {
        epochs: 40,
        batch_size: 3,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup: 3,
        eval_fraction: 0.0,
        ..SftConfig::default()
    };
    let s = train_sft(
        &mut be,
        &mut p,
        &chats,
        &[],
        &config,
        None,
        &Progress::hidden("sft", 40),
    )
    .unwrap();
    eprintln!("LoRA SFT loss {} -> {}", s.first_loss, s.last_loss);
    assert!(
        s.last_loss < 0.5 * s.first_loss,
        "{} -> {}",
        s.first_loss,
        s.last_loss
    );
    assert_eq!(
        base_bits(&mut be, &p.model),
        base_before,
        "the base is frozen"
    );
    let after = adapter_values(&mut be, &p.model);
    // A B factor started at zero and must have moved (the adapters learned).
    assert!(after.iter().zip(&adapters_before).all(|(a, b)| a != b));
}

fn pairs() -> Vec<EncodedPair> {
    (0..6u32)
        .map(|i| EncodedPair {
            prompt: vec![1 + i, 40 + 3 * i, 90 + i],
            chosen: vec![7, 7 + i, 0],
            rejected: vec![200 + i, 150, 120 + 2 * i, 0],
        })
        .collect()
}

#[test]
fn lora_dpo_uses_the_frozen_base_as_its_reference() {
    let mut be = kiln_tensor::cpu_backend(Some(2));
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    let mut base = llama(&mut be, 300, 13);
    base.save_pretrained(&mut be, &base_dir).unwrap();
    let want_refs = pair_logps(&mut base, &mut be, &pairs(), 0, 1).unwrap();
    base.release(&mut be).unwrap();

    let mut model = Gpt::load_pretrained(&mut be, &base_dir).unwrap();
    model.add_lora(&mut be, lora(4), 5).unwrap();
    // A non-zero adapter: the policy then differs from its base, and the
    // reference must still be the base.
    let vals: Vec<Vec<f32>> = adapter_values(&mut be, &model)
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.iter().map(|x| x + 0.01 * (i % 3) as f32).collect())
        .collect();
    for (p, v) in model.lora_params().to_vec().iter().zip(&vals) {
        be.upload_f32(p.value, v).unwrap();
    }
    let cache = dir.path().join("refs.json");
    let (refs, source) =
        lora_reference_logps(&mut be, &mut model, &base_dir, None, &pairs(), 0, 1, &cache).unwrap();
    assert_eq!(source, RefSource::Computed);
    assert_eq!(refs, want_refs, "adapters off = the base, bit for bit");
    let with_adapters = pair_logps(&mut model, &mut be, &pairs(), 0, 1).unwrap();
    assert_ne!(with_adapters, want_refs, "adapters back on afterwards");

    // Continuing a saved adapter (`--adapter`): the reference is the model
    // DPO starts from, base plus adapter, and the base-only cache is not
    // taken for it (the fingerprint covers the adapter too).
    let adapter_dir = dir.path().join("adapter");
    model.save_lora(&mut be, &adapter_dir, "base").unwrap();
    let (continued, source) = lora_reference_logps(
        &mut be,
        &mut model,
        &base_dir,
        Some(&adapter_dir),
        &pairs(),
        0,
        1,
        &cache,
    )
    .unwrap();
    assert_eq!(
        source,
        RefSource::Computed,
        "the base's cache is stale here"
    );
    assert_eq!(continued, with_adapters, "the reference is base + adapter");

    let base_before = base_bits(&mut be, &model);
    let cfg = DpoConfig {
        steps: Some(8),
        batch_size: 6,
        micro_batch: 3,
        lr: 3e-3,
        min_lr: 3e-3,
        ..DpoConfig::default()
    };
    let s = train(
        &mut be,
        &mut model,
        &pairs(),
        &refs,
        0,
        &cfg,
        None,
        &Progress::hidden("dpo", 8),
    )
    .unwrap();
    eprintln!(
        "LoRA DPO loss {} -> {}, {:?}",
        s.first_loss, s.last_loss, s.after
    );
    assert!(
        s.last_loss < s.first_loss,
        "{} -> {}",
        s.first_loss,
        s.last_loss
    );
    assert!(s.after.rewards_margins > 0.0, "{:?}", s.after);
    assert_eq!(
        base_bits(&mut be, &model),
        base_before,
        "the base is frozen"
    );
}
