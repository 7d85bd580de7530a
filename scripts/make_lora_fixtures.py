#!/usr/bin/env python3
"""Regenerates tests/fixtures/lora_tiny/: PEFT reference values for kiln-model's LoRA.

The base is tests/fixtures/llama_tiny/model (scripts/make_llama_fixtures.py; grouped-query,
so k/v adapters are narrower than q's). PEFT's LoraConfig (r=4, lora_alpha=12, dropout 0,
every projection q,k,v,o,gate,up,down) wraps it; B is set N(0, 0.1) from a fixed seed (PEFT
starts it at zero, which would hide every path through B) and A N(0, 0.1) likewise.

Written files:
  adapter/adapter_config.json, adapter/adapter_model.safetensors   -- PeftModel.save_pretrained
  reference.safetensors  -- tokens, targets (i64, -1 = ignored; the llama_tiny batch), logits
      [B,T,V], loss [] (mean over non-ignored targets), grad.<PEFT name> for every lora_A/lora_B
      tensor (names as in adapter_model.safetensors), merged_logits [B,T,V] (merge_and_unload)
  reference.json         -- the settings, for humans

Run from the repository root:  python3 scripts/make_lora_fixtures.py
(needs torch, transformers, safetensors and peft; `pip install peft`)
"""
import json
import os

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
BASE = os.path.join(FIXTURES, "llama_tiny")
OUT = os.path.join(FIXTURES, "lora_tiny")
RANK, ALPHA = 4, 12
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    torch.manual_seed(0)
    base = LlamaForCausalLM.from_pretrained(os.path.join(BASE, "model"), dtype=torch.float32)
    base.config._attn_implementation = "eager"
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                     bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.eval()
    ref = load_file(os.path.join(BASE, "reference.safetensors"))
    tokens, targets = ref["tokens"], ref["targets"]
    model.zero_grad()
    logits = model(input_ids=tokens).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-1)
    loss.backward()

    os.makedirs(OUT, exist_ok=True)
    adapter_dir = os.path.join(OUT, "adapter")
    model.save_pretrained(adapter_dir)
    # Keep the committed files machine-independent: no absolute path, no model card.
    os.remove(os.path.join(adapter_dir, "README.md"))
    config_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(config_path) as f:
        adapter_config = json.load(f)
    adapter_config["base_model_name_or_path"] = "llama_tiny"
    with open(config_path, "w") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    grads = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            # PEFT saves `...q_proj.lora_A.weight` for `...q_proj.lora_A.default.weight`.
            key = name.replace(".default", "")
            assert key in saved, key
            grads["grad." + key] = p.grad.detach().clone()
    with torch.no_grad():
        merged = model.merge_and_unload()
        merged_logits = merged(input_ids=tokens).logits
    out = {"tokens": tokens, "targets": targets, "logits": logits.detach(),
           "loss": loss.detach(), "merged_logits": merged_logits, **grads}
    save_file({k: v.contiguous() for k, v in out.items()},
              os.path.join(OUT, "reference.safetensors"))
    import peft
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"generator": "scripts/make_lora_fixtures.py", "base": "llama_tiny",
                   "torch": torch.__version__, "peft": peft.__version__, "rank": RANK,
                   "alpha": ALPHA, "targets": TARGETS, "loss": loss.item(),
                   "adapter_tensors": sorted(saved)}, f, indent=1)
    print(f"wrote {OUT}: loss {loss.item():.6f}, {len(saved)} adapter tensors")


if __name__ == "__main__":
    main()
