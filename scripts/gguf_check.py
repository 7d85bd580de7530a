#!/usr/bin/env python3
"""Reads a GGUF file kiln wrote with llama.cpp's own `gguf` package and checks it against the HF
model directory it came from; with `llama-cpp-python` installed, also runs it in llama.cpp.

  gguf_check.py --gguf FILE --model DIR [--reference reference.json]

Prints one JSON object:
  architecture, tensors, file_type, vocab     -- as the reader sees them
  worst_weight_error                          -- max |gguf - hf| / max|hf| over every tensor,
                                                 after llama.cpp's renaming, transposes and
                                                 q/k permutation (reimplemented here from
                                                 convert_hf_to_gguf.py, independently of kiln)
  missing                                     -- HF tensors without a GGUF counterpart
  llama_cpp                                   -- null without llama-cpp-python; else the
                                                 token ids llama.cpp's tokenizer gives for the
                                                 reference prompt, whether they equal HF's, and
                                                 the max |logit difference| / max |logit| at the
                                                 last position

Exit code 3 when the `gguf` package is missing (tests skip then).
"""
import argparse
import json
import os
import sys

try:
    import numpy as np
    import gguf
    from gguf import GGUFReader
    from gguf.quants import dequantize
except ImportError:
    print("python package `gguf` is not installed (pip install gguf)", file=sys.stderr)
    sys.exit(3)


def hf_tensors(model_dir):
    from safetensors.numpy import load_file
    return load_file(os.path.join(model_dir, "model.safetensors"))


def permute(w, n_head):
    # convert_hf_to_gguf.py's LlamaModel.permute: HF halves -> interleaved pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def expected(config, hf):
    """The GGUF name and values of every HF tensor."""
    out = {}
    kind = config["model_type"]
    if kind == "gpt2":
        p = "transformer." if "transformer.wte.weight" in hf else ""
        out["token_embd.weight"] = hf[p + "wte.weight"]
        out["output.weight"] = hf.get("lm_head.weight", hf[p + "wte.weight"])
        out["position_embd.weight"] = hf[p + "wpe.weight"]
        out["output_norm.weight"] = hf[p + "ln_f.weight"]
        out["output_norm.bias"] = hf[p + "ln_f.bias"]
        for i in range(config["n_layer"]):
            h, b = f"{p}h.{i}.", f"blk.{i}."
            for hn, gn in [("ln_1", "attn_norm"), ("ln_2", "ffn_norm")]:
                out[b + gn + ".weight"] = hf[h + hn + ".weight"]
                out[b + gn + ".bias"] = hf[h + hn + ".bias"]
            for hn, gn in [("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"),
                           ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down")]:
                out[b + gn + ".weight"] = hf[h + hn + ".weight"].T
                out[b + gn + ".bias"] = hf[h + hn + ".bias"]
        return out
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    permuted = kind in ("llama", "mistral")
    out["token_embd.weight"] = hf["model.embed_tokens.weight"]
    out["output_norm.weight"] = hf["model.norm.weight"]
    if "lm_head.weight" in hf:
        out["output.weight"] = hf["lm_head.weight"]
    for i in range(config["num_hidden_layers"]):
        h, b = f"model.layers.{i}.", f"blk.{i}."
        out[b + "attn_norm.weight"] = hf[h + "input_layernorm.weight"]
        out[b + "ffn_norm.weight"] = hf[h + "post_attention_layernorm.weight"]
        q, k = hf[h + "self_attn.q_proj.weight"], hf[h + "self_attn.k_proj.weight"]
        out[b + "attn_q.weight"] = permute(q, heads) if permuted else q
        out[b + "attn_k.weight"] = permute(k, kv) if permuted else k
        out[b + "attn_v.weight"] = hf[h + "self_attn.v_proj.weight"]
        out[b + "attn_output.weight"] = hf[h + "self_attn.o_proj.weight"]
        for proj, gn in [("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")]:
            if h + f"self_attn.{proj}.bias" in hf:
                out[b + gn + ".bias"] = hf[h + f"self_attn.{proj}.bias"]
        for proj, gn in [("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")]:
            out[b + gn + ".weight"] = hf[h + f"mlp.{proj}.weight"]
    return out


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    v = f.parts[f.data[0]]
    if f.types and f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(v).decode()
    return v.tolist()[0] if len(v) == 1 else v.tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--reference")
    a = ap.parse_args()
    reader = GGUFReader(a.gguf)
    with open(os.path.join(a.model, "config.json")) as f:
        config = json.load(f)
    want = expected(config, hf_tensors(a.model))
    got = {t.name: t for t in reader.tensors}
    worst, missing = 0.0, [n for n in want if n not in got]
    for name, values in want.items():
        if name not in got:
            continue
        t = got[name]
        deq = dequantize(t.data, t.tensor_type).reshape(values.shape).astype(np.float64)
        err = float(np.abs(deq - values).max() / max(np.abs(values).max(), 1e-12))
        worst = max(worst, err)
    result = {
        "architecture": field(reader, "general.architecture"),
        "file_type": field(reader, "general.file_type"),
        "tensors": len(reader.tensors),
        "vocab": len(reader.fields["tokenizer.ggml.tokens"].data),
        "tokenizer_model": field(reader, "tokenizer.ggml.model"),
        "tokenizer_pre": field(reader, "tokenizer.ggml.pre"),
        "worst_weight_error": worst,
        "missing": missing,
        "extra": sorted(n for n in got if n not in want and n != "rope_freqs.weight"),
        "llama_cpp": None,
    }
    if a.reference:
        try:
            from llama_cpp import Llama
        except ImportError:
            Llama = None
        if Llama is not None:
            with open(a.reference) as f:
                ref = json.load(f)
            # logits_all: without it llama-cpp-python keeps no per-position scores.
            llm = Llama(model_path=a.gguf, n_ctx=128, logits_all=True, verbose=False, n_threads=1)
            ids = llm.tokenize(ref["prompt"].encode(), add_bos=True, special=False)
            llm.eval(ref["ids"])
            logits = np.array(llm.scores[len(ref["ids"]) - 1], dtype=np.float64)
            want_logits = np.array(ref["last_logits"])
            result["llama_cpp"] = {
                "ids": ids,
                "ids_match": ids == ref["ids"],
                "logit_error": float(np.abs(logits - want_logits).max() / np.abs(want_logits).max()),
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
