#!/usr/bin/env python3
"""Peak memory of `kiln sft`, full fine-tuning against LoRA (docs/perf.md,
"LoRA vs full fine-tuning memory").

    python3 scripts/lora_memory.py --kiln target/debug/kiln [--work DIR]

Builds the recipe's inputs once under --work: a kiln-trained tokenizer
(vocab 321 with the chat specials), a transformers-made Llama (8 layers,
d 512, 8 heads / 4 kv, SwiGLU 1376, untied, f32, random init) saved with
`save_pretrained`, and 24 short chats; then runs
`kiln sft --max-steps 3 --batch-size 4 --threads 2`, in full and with
`--lora-rank 8`, each under scripts/peak_rss.py, and prints one JSON line
per run with the peak RSS and summary.json's memory figures.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
QA = [
    ("Name a red fruit.", "An apple is a red fruit."),
    ("Say hello.", "Hello there, friend!"),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Count to three.", "One, two, three."),
]


def build(kiln, work):
    model = os.path.join(work, "model")
    if os.path.isfile(os.path.join(model, "model.safetensors")):
        return model
    os.makedirs(model, exist_ok=True)
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as f:
        f.write(" ".join(q + " " + a for q, a in QA) * 4)
    tok = os.path.join(model, "tokenizer.json")
    cmd = [kiln, "tokenizer", "train", "--input", corpus, "--vocab-size", "321",
           "--output", tok, "--pattern", "gpt2"]
    for s in SPECIALS:
        cmd += ["--special", s]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    t = json.load(open(tok))
    ids = list(t["model"]["vocab"].values()) + [x["id"] for x in t.get("added_tokens", [])]
    vocab = max(ids) + 1
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1376,
                      num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=256, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(model, safe_serialization=True)
    with open(os.path.join(work, "chats.jsonl"), "w") as f:
        for i in range(24):
            q, a = QA[i % len(QA)]
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")
    return model


def run(kiln, work, model, lora):
    out = os.path.join(work, "lora" if lora else "full")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [kiln, "sft", "--model", model, "--data", os.path.join(work, "chats.jsonl"),
           "--out", out, "--max-steps", "3", "--batch-size", "4", "--threads", "2",
           "--eval-fraction", "0"]
    if lora:
        cmd += ["--lora-rank", "8"]
    probe = subprocess.run(
        [sys.executable, os.path.join(HERE, "peak_rss.py"), "--marker",
         os.path.join(out, "never"), "--"] + cmd,
        check=True, capture_output=True, text=True)
    rss = json.loads(probe.stdout.strip().splitlines()[-1])
    summary = json.load(open(os.path.join(out, "summary.json")))
    return {"run": "lora-8" if lora else "full", "peak_rss_mib": rss["peak_rss_mib"],
            "exit": rss["exit"], "wall_s": rss["wall_s"], "memory": summary.get("memory")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--work", default="/tmp/kiln-lora-memory")
    a = ap.parse_args()
    model = build(a.kiln, a.work)
    for lora in (False, True):
        print(json.dumps(run(a.kiln, a.work, model, lora)), flush=True)


if __name__ == "__main__":
    main()
