#!/usr/bin/env python3
"""transformers' side of kiln's Hugging Face round trips (tests/it/hf_models.rs).

    python3 scripts/hf_interop.py JOB.json OUT.json

JOB.json is {"tasks": [...]}; each task has a "kind":

- "chat_ids": {"dir", "cases": [{"messages", "add_generation_prompt",
  "sanitize"?, "chat_template"?, "kwargs"?}]} -> per case the text and ids
  of AutoTokenizer(dir).apply_chat_template (sanitize: its
  sanitize_control_tokens=True; chat_template: another template).
- "generate": {"dir", "prompts": [messages...], "max_new_tokens"} ->
  AutoModelForCausalLM greedy generate on apply_chat_template(...,
  add_generation_prompt=True): the prompt ids and the new ids (generate
  stops by itself at generation_config.json's eos ids).
- "score": {"dir", "pairs": [{"prompt", "chosen", "rejected"}]} ->
  AutoModelForSequenceClassification scores of chosen and rejected as TRL's
  RewardTrainer tokenizes them (chat template over prompt + reply, eos
  appended unless already last), scored in one right-padded batch.
- "finetune": {"dir", "out", "messages", "lr", "tokens"} -> one AdamW step
  of AutoModelForCausalLM on the chat, save_pretrained (model and tokenizer)
  to "out", the saved model's logits for "tokens" (flat list) and the loss.

Prints nothing on success; any failure is an exception (exit code 1).
"""

import json
import sys

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)


def ids_of(encoded):
    # apply_chat_template returns a BatchEncoding (return_dict) or a list
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return [int(x) for x in encoded]


def chat_ids(task):
    tok = AutoTokenizer.from_pretrained(task["dir"])
    out = []
    for case in task["cases"]:
        extra = dict(case.get("kwargs", {}))
        if case.get("chat_template") is not None:
            extra["chat_template"] = case["chat_template"]
        gen = bool(case["add_generation_prompt"])
        text = tok.apply_chat_template(
            case["messages"], add_generation_prompt=gen, tokenize=False, **extra
        )
        ids = tok.apply_chat_template(
            case["messages"],
            add_generation_prompt=gen,
            tokenize=True,
            return_dict=True,
            sanitize_control_tokens=bool(case.get("sanitize", False)),
            **extra,
        )
        out.append({"text": text, "ids": ids_of(ids)})
    return {
        "cases": out,
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
    }


def generate(task):
    tok = AutoTokenizer.from_pretrained(task["dir"])
    model = AutoModelForCausalLM.from_pretrained(task["dir"]).float().eval()
    out = []
    for messages in task["prompts"]:
        prompt = ids_of(
            tok.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        )
        x = torch.tensor([prompt])
        with torch.no_grad():
            y = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=task["max_new_tokens"],
            )
        new = [int(t) for t in y[0, len(prompt):]]
        text = tok.decode(new, skip_special_tokens=True)
        out.append({"prompt": prompt, "new": new, "text": text})
    return {"replies": out, "eos_token_id": model.generation_config.eos_token_id}


def score(task):
    tok = AutoTokenizer.from_pretrained(task["dir"])
    model = AutoModelForSequenceClassification.from_pretrained(task["dir"]).float().eval()
    rows, appended = [], 0
    for side in ("chosen", "rejected"):
        for p in task["pairs"]:
            messages = p["prompt"] + [{"role": "assistant", "content": p[side]}]
            ids = ids_of(
                tok.apply_chat_template(messages, tokenize=True, return_dict=True)
            )
            # TRL's RewardTrainer: append eos unless the sequence ends with it
            if ids[-1] != tok.eos_token_id:
                ids.append(tok.eos_token_id)
                appended += 1
            rows.append(ids)
    batch = tok.pad({"input_ids": rows}, padding=True, padding_side="right", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[:, 0]
    n = len(task["pairs"])
    s = [float(v) for v in logits]
    return {
        "chosen": s[:n],
        "rejected": s[n:],
        "eos_appended": appended,
        "num_labels": model.config.num_labels,
        "pad_token_id": model.config.pad_token_id,
        "ids": rows,
    }


def finetune(task):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(task["dir"])
    model = AutoModelForCausalLM.from_pretrained(task["dir"]).float()
    model.train()
    ids = ids_of(tok.apply_chat_template(task["messages"], tokenize=True, return_dict=True))
    x = torch.tensor([ids])
    opt = torch.optim.AdamW(model.parameters(), lr=task["lr"])
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    model.eval()
    model.save_pretrained(task["out"])
    tok.save_pretrained(task["out"])
    saved = AutoModelForCausalLM.from_pretrained(task["out"]).float().eval()
    with torch.no_grad():
        logits = saved(input_ids=torch.tensor([task["tokens"]])).logits[0]
    return {"loss": float(loss), "logits": [float(v) for v in logits.flatten()]}


KINDS = {"chat_ids": chat_ids, "generate": generate, "score": score, "finetune": finetune}


def main():
    job = json.load(open(sys.argv[1], encoding="utf-8"))
    results = [KINDS[t["kind"]](t) for t in job["tasks"]]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump({"results": results}, f)


if __name__ == "__main__":
    main()
