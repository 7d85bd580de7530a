#!/usr/bin/env python3
"""Makes a tiny chat Llama the way an open checkpoint is laid out, as a stand-in for a
downloaded one (SmolLM2-style: LlamaForCausalLM with tied embeddings, grouped-query
attention, a byte-level BPE tokenizer.json and the ChatML chat_template in
tokenizer_config.json; eos is <|endoftext|>, as in a base model's files).

A random model cannot stand in for a downloaded one under LoRA: its frozen embeddings and
norms bound the logits, so no adapter can make it confident. So the script pretrains it
briefly (PyTorch, AdamW) on the tasks' words as plain text, one prompt and answer per
document: it then knows the words and the answers but not the ChatML format, which is
what a LoRA fine-tune then teaches (README's end-to-end example, tests/it/open_model.rs).
The tokenizer is trained with Hugging Face `tokenizers` on the same text (`kiln data
tasks` writes it) so that its words are few tokens.

    python3 scripts/make_chat_llama.py --tasks TASKS_DIR/sft.jsonl --out DIR [--layers 2 --hidden 64]

tests/fixtures/chat_llama_tiny/ was made with the defaults from
`kiln data tasks --out /tmp/tasks` (seed 1).
"""
import argparse
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

# SmolLM2-Instruct's template (ChatML with a default system message).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def chat_texts(path):
    with open(path) as f:
        for line in f:
            for m in json.loads(line)["messages"]:
                yield m["content"]
    yield "You are a helpful AI assistant. system user assistant"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", required=True, help="sft.jsonl from `kiln data tasks`")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=a.vocab, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(chat_texts(a.tasks), trainer)
    tok.save(os.path.join(a.out, "tokenizer.json"))
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "model_max_length": a.context, "clean_up_tokenization_spaces": False,
            "chat_template": CHATML,
        }, f, indent=2)

    torch.manual_seed(a.seed)
    heads = max(2, a.hidden // 16)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=a.hidden, intermediate_size=a.hidden * 8 // 3,
        num_hidden_layers=a.layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
        max_position_embeddings=a.context, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(config)
    pretrain(model, tok, a.tasks, a.pretrain_steps)
    model.save_pretrained(a.out, safe_serialization=True)
    print(f"wrote {a.out}: {sum(p.numel() for p in model.parameters())} parameters, "
          f"vocab {tok.get_vocab_size()}")


def pretrain(model, tok, tasks, steps, batch=32, lr=3e-3):
    """Next-token training on `prompt answer<|endoftext|>` documents (no chat format)."""
    eot = tok.token_to_id("<|endoftext|>")
    docs = []
    with open(tasks) as f:
        for line in f:
            m = json.loads(line)["messages"]
            docs.append(tok.encode(m[0]["content"] + " " + m[1]["content"]).ids + [eot])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        pick = torch.randint(len(docs), (batch,), generator=gen).tolist()
        width = max(len(docs[i]) for i in pick)
        ids = torch.full((batch, width), eot)
        labels = torch.full((batch, width), -100)
        for row, i in enumerate(pick):
            ids[row, :len(docs[i])] = torch.tensor(docs[i])
            labels[row, :len(docs[i])] = torch.tensor(docs[i])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"pretrain step {step}: loss {loss.item():.3f}")
    model.eval()


if __name__ == "__main__":
    main()
