#!/usr/bin/env python3
"""PyTorch CPU peer of kiln's SmolLM-135M train-step benchmark
(benches/benches/train_smollm.rs).

The model: transformers' LlamaForCausalLM from a SmolLM-135M-shaped config
(30 layers, d 576, 9 heads / 3 kv, SwiGLU 1536, vocab 49152, tied
embeddings, rope_theta 10000, rms eps 1e-5), randomly initialised (nothing
is downloaded). Full fine-tuning trains every weight; --lora-rank R wraps
it in peft's LoRA on all 7 projections (alpha 2R, no dropout) and trains
the adapters alone. --precision bf16 runs the forward under
torch.autocast(cpu, bfloat16) with f32 weights (kiln's mixed precision).
A step is forward + loss + backward + global-norm clip 1.0 + AdamW
(betas 0.9/0.95, wd 0.1 on 2-D tensors), on one fixed random batch.

Prints one JSON line: {"step_s" (median), "tokens_per_s", "peak_rss_mib"
(this process's VmHWM), "torch", ...}.
"""
import argparse
import json
import math
import time

import torch


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def smollm_config(seq):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=max(seq, 2048),
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tuning")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(smollm_config(a.seq))
    # SDPA, as kiln's fused attention; eager would materialise T x T.
    model.config._attn_implementation = "sdpa"
    model.train()
    if a.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0, bias="none",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                            "gate_proj", "up_proj", "down_proj"],
        ))
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True,
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 49152, (a.batch, a.seq), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    assert math.isfinite(loss)
    med = sorted(times)[len(times) // 2]
    print(json.dumps({
        "model": "smollm-135m-shaped", "batch": a.batch, "seq": a.seq, "threads": a.threads,
        "precision": a.precision, "lora_rank": a.lora_rank,
        "trainable_params": sum(p.numel() for p in trainable),
        "step_s": med, "tokens_per_s": a.batch * a.seq / med,
        "peak_rss_mib": peak_rss_mib(), "loss": loss,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
