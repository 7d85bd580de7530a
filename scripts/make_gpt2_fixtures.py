#!/usr/bin/env python3
"""Regenerates tests/fixtures/gpt2_tiny/: PyTorch + transformers reference values for kiln-model.

A tiny GPT-2 (vocab 301, so kiln pads it internally to 320; 32 positions, 2 layers, 4 heads,
d=32) with a fixed-seed random init, made less symmetric than GPT-2's own init (LayerNorm
weights around 1, non-zero biases) so that every parameter's gradient path is exercised.

Written files:
  model/config.json, model/model.safetensors   -- GPT2LMHeadModel.save_pretrained
  reference.safetensors                        -- tokens, targets (i64, -1 = ignored),
      logits [B,T,V], loss [] (mean over non-ignored targets), grad.<HF name> for every
      parameter (HF layout), adamw_losses [10]
  reference.json                               -- the settings, for humans

Run from the repository root:  python3 scripts/make_gpt2_fixtures.py
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gpt2_tiny")
B, T = 2, 16
VOCAB = 301
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
ADAMW_STEPS = 10


def build_model():
    torch.manual_seed(1234)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config).float().eval()
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # biases and LayerNorm biases
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model


def fixed_batch():
    g = torch.Generator().manual_seed(7)
    seq = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    tokens = seq[:, :T].clone()
    targets = seq[:, 1:].clone()
    # A few ignored targets exercise the loss mask (kiln: target >= vocab_size is ignored).
    targets[0, 3] = -1
    targets[1, 0] = -1
    targets[1, 11] = -1
    return tokens, targets


def loss_of(model, tokens, targets):
    logits = model(input_ids=tokens).logits
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-1)
    return logits, loss


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model = build_model()
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(os.path.join(OUT, "model"), safe_serialization=True)

    tokens, targets = fixed_batch()
    tensors = {"tokens": tokens.contiguous(), "targets": targets.contiguous()}

    model.zero_grad()
    logits, loss = loss_of(model, tokens, targets)
    loss.backward()
    tensors["logits"] = logits.detach().contiguous()
    tensors["loss"] = loss.detach().reshape([]).contiguous()
    names = []
    for name, p in model.named_parameters():
        tensors["grad." + name] = p.grad.detach().clone().contiguous()
        names.append(name)

    # AdamW: weight decay only on 2-D parameters, the same fixed batch every step, no clipping.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": ADAMW["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=ADAMW["lr"],
        betas=ADAMW["betas"],
        eps=ADAMW["eps"],
        foreach=False,
        fused=False,
    )
    losses = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad(set_to_none=True)
        _, loss = loss_of(model, tokens, targets)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    tensors["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)

    save_file(tensors, os.path.join(OUT, "reference.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(
            {
                "generator": "scripts/make_gpt2_fixtures.py",
                "torch": torch.__version__,
                "batch": [B, T],
                "ignored_target": -1,
                "adamw": {**ADAMW, "betas": list(ADAMW["betas"]), "steps": ADAMW_STEPS,
                          "decay": "2-D parameters only"},
                "params": names,
                "loss": tensors["loss"].item(),
                "adamw_losses": losses,
            },
            f,
            indent=1,
        )
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}: loss {tensors['loss'].item():.6f}, "
          f"adamw losses {losses[0]:.6f} .. {losses[-1]:.6f}", file=sys.stderr)


if __name__ == "__main__":
    main()
