#!/usr/bin/env python3
"""Regenerates tests/fixtures/{llama,llama3,qwen2,mistral}_tiny/: transformers reference values
for kiln-model's Llama-family decoders.

Each is a tiny random model (vocab 72, so kiln pads it internally to 128; 2 layers) with a
fixed-seed init made less symmetric than transformers' own (RMSNorm weights around 1,
Qwen2's q/k/v biases non-zero, weights N(0, 0.1)) so that every gradient path is exercised:
  llama_tiny    LlamaForCausalLM, untied lm_head, grouped-query (4 heads, 2 kv), rope_theta 5000
  llama3_tiny   LlamaForCausalLM with rope_type "llama3" (head_dim 8: high, medium and low
                frequencies all occur), 2 heads, 1 kv head
  qwen2_tiny    Qwen2ForCausalLM, tied embeddings, q/k/v biases, 4 heads, 2 kv
  mistral_tiny  MistralForCausalLM, sliding_window 5 < T = 16 (eager attention honours it)

Written files, per model:
  model/config.json, model/model.safetensors   -- save_pretrained (f32)
  reference.safetensors                        -- tokens, targets (i64, -1 = ignored),
      logits [B,T,V], loss [] (mean over non-ignored targets), grad.<HF name> for every
      parameter, greedy [B, 6] (greedy continuation of tokens[:, :5], use_cache=True)
  reference.json                               -- the settings, for humans

Run from the repository root:  python3 scripts/make_llama_fixtures.py
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
B, T = 2, 16
VOCAB = 72
PROMPT, NEW = 5, 6

COMMON = dict(vocab_size=VOCAB, max_position_embeddings=64, num_hidden_layers=2,
              rms_norm_eps=1e-5, attention_dropout=0.0, bos_token_id=0, eos_token_id=1,
              hidden_act="silu")

MODELS = {
    "llama_tiny": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=32, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2,
        rope_theta=5000.0, tie_word_embeddings=False)),
    "llama3_tiny": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=16, intermediate_size=24, num_attention_heads=2, num_key_value_heads=1,
        rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=256,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "qwen2_tiny": (Qwen2Config, Qwen2ForCausalLM, dict(
        hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
        rope_theta=10000.0, tie_word_embeddings=True, use_sliding_window=False)),
    "mistral_tiny": (MistralConfig, MistralForCausalLM, dict(
        hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
        rope_theta=10000.0, tie_word_embeddings=False, sliding_window=5)),
}


def build_model(config_cls, model_cls, extra, seed):
    torch.manual_seed(seed)
    config = config_cls(**{**COMMON, **extra})
    config._attn_implementation = "eager"
    model = model_cls(config).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # Qwen2's q/k/v biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def fixed_batch(seed):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    tokens = seq[:, :T].clone()
    targets = seq[:, 1:].clone()
    targets[0, 3] = -1
    targets[1, 0] = -1
    targets[1, 11] = -1
    return tokens, targets


def make(name, config_cls, model_cls, extra, seed):
    out = os.path.join(ROOT, name)
    model = build_model(config_cls, model_cls, extra, seed)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(os.path.join(out, "model"), safe_serialization=True)
    tokens, targets = fixed_batch(seed + 2)
    tensors = {"tokens": tokens.contiguous(), "targets": targets.contiguous()}
    model.zero_grad()
    logits = model(input_ids=tokens).logits
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-1)
    loss.backward()
    tensors["logits"] = logits.detach().contiguous()
    tensors["loss"] = loss.detach().reshape([]).contiguous()
    names = []
    for pname, p in model.named_parameters():
        tensors["grad." + pname] = p.grad.detach().clone().contiguous()
        names.append(pname)
    with torch.no_grad():
        greedy = model.generate(tokens[:, :PROMPT], max_new_tokens=NEW, do_sample=False,
                                use_cache=True, pad_token_id=0, eos_token_id=None)
    tensors["greedy"] = greedy[:, PROMPT:].contiguous()
    save_file(tensors, os.path.join(out, "reference.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"generator": "scripts/make_llama_fixtures.py", "model": name,
                   "torch": torch.__version__, "batch": [B, T], "ignored_target": -1,
                   "params": names, "loss": loss.item(),
                   "greedy": greedy[:, PROMPT:].tolist()}, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(out)}: loss {loss.item():.6f}", file=sys.stderr)


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for i, (name, (config_cls, model_cls, extra)) in enumerate(MODELS.items()):
        make(name, config_cls, model_cls, extra, 100 + 10 * i)


if __name__ == "__main__":
    main()
