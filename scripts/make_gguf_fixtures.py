#!/usr/bin/env python3
"""Regenerates tests/fixtures/gguf/: small HF model directories, each with its own tokenizer,
for `kiln export --gguf`, and transformers' logits on a prompt as the reference llama.cpp
must reproduce from kiln's GGUF file.

  gpt2     GPT2LMHeadModel (tied head), a byte-level BPE trained here (GPT-2's regex)
  llama3   LlamaForCausalLM, untied, grouped-query (4 heads, 2 kv), rope_type "llama3",
           the Llama 3 style tokenizer of crates/kiln-tokenizer/tests/fixtures/hf_families
  qwen2    Qwen2ForCausalLM, tied, q/k/v biases, the Qwen2 style tokenizer (NFC)
  mistral  MistralForCausalLM, untied, the SentencePiece-style tokenizer (byte fallback)

Hidden size 32 (q8_0 needs rows of multiples of 32), 2 layers, weights N(0, 0.1) with RMSNorm /
LayerNorm weights around 1, so that a wrong permutation or name shows in the logits.

Written files, per model:
  model/config.json, model.safetensors, generation_config.json   -- save_pretrained (f32)
  model/tokenizer.json, tokenizer_config.json                    -- the tokenizer
  reference.json  -- {"prompt", "ids" (HF's, with bos where the tokenizer adds it),
                      "last_logits" (transformers, last position, f32)}

Run from the repository root:  python3 scripts/make_gguf_fixtures.py
"""
import json
import os
import shutil

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
FAMILIES = os.path.join(ROOT, "crates", "kiln-tokenizer", "tests", "fixtures", "hf_families")
TEXT = os.path.join(ROOT, "tests", "fixtures", "text", "kjv_excerpt.txt")
PROMPT = "In the beginning God created the heaven and the earth. And the earth was 12 days"


def gpt2_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train([TEXT], trainer)
    return tok


SPECIALS = {  # bos, eos of each family's tokenizer
    "gpt2": ("<|endoftext|>", "<|endoftext|>", False),
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>", True),
    "qwen2": (None, "<|endoftext|>", False),
    "mistral": ("<s>", "</s>", True),
}

COMMON = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
              hidden_act="silu")

MODELS = {
    "gpt2": (GPT2Config, GPT2LMHeadModel, None),
    "llama3": (LlamaConfig, LlamaForCausalLM, dict(
        tie_word_embeddings=False, rope_theta=50000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True, rope_theta=10000.0,
                                                 use_sliding_window=False)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(tie_word_embeddings=False,
                                                       rope_theta=10000.0, sliding_window=None)),
}


def main():
    torch.manual_seed(0)
    for name, (config_cls, model_cls, extra) in MODELS.items():
        tok = gpt2_tokenizer() if name == "gpt2" else Tokenizer.from_file(
            os.path.join(FAMILIES, f"{name}.tokenizer.json"))
        bos, eos, add_bos = SPECIALS[name]
        vocab = tok.get_vocab_size(with_added_tokens=True)
        ids_of = lambda t: tok.token_to_id(t) if t else None
        if name == "gpt2":
            config = config_cls(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                bos_token_id=ids_of(bos), eos_token_id=ids_of(eos),
                                attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
        else:
            config = config_cls(vocab_size=vocab, bos_token_id=ids_of(bos),
                                eos_token_id=ids_of(eos), **COMMON, **extra)
        model = model_cls(config).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.dim() == 1 and ("norm" in pname or "ln_" in pname) and pname.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.1 * torch.randn_like(p))
        out = os.path.join(OUT, name)
        shutil.rmtree(out, ignore_errors=True)
        model_dir = os.path.join(out, "model")
        model.save_pretrained(model_dir, safe_serialization=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
        fast.add_bos_token = add_bos
        fast.save_pretrained(model_dir)
        # tokenizer_config.json: say whether a bos is prepended, as Llama's files do.
        cfg_path = os.path.join(model_dir, "tokenizer_config.json")
        with open(cfg_path) as f:
            tcfg = json.load(f)
        tcfg["add_bos_token"] = add_bos
        with open(cfg_path, "w") as f:
            json.dump(tcfg, f, indent=2)
        ids = tok.encode(PROMPT, add_special_tokens=False).ids
        if add_bos:
            ids = [ids_of(bos)] + ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].tolist()
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump({"prompt": PROMPT, "ids": ids, "last_logits": logits}, f)
        print(f"{name}: vocab {vocab}, {sum(p.numel() for p in model.parameters())} parameters, "
              f"{len(ids)} prompt ids")


if __name__ == "__main__":
    main()
