#!/usr/bin/env python3
"""PyTorch DDP peer of kiln's data-parallel benchmark (benches/benches/data_parallel.rs).

The model, optimizer and step of train_step_torch.py, run by WORLD processes
under DistributedDataParallel over gloo on this machine (25 MB buckets, as
kiln's), each process at GLOBAL/WORLD sequences and --threads threads: the
same global batch for every world size. Prints one JSON line per world size:
{"world", "batch_per_rank", "threads", "step_s", "tokens_per_s",
"peak_rss_mib_per_rank"} (step_s: rank 0's median full step after warm-up).
"""
import argparse
import json
import math
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step_torch import PRESETS, Gpt, adamw, peak_rss_mib  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank, world, a, port, results):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n_layer, c, nh = PRESETS[a.config]
    model = Gpt(a.vocab, a.seq, n_layer, c, nh)
    wrapped = DDP(model, bucket_cap_mb=25) if world > 1 else model
    opt = adamw(model)
    batch = a.global_batch // world
    g = torch.Generator().manual_seed(rank)
    x = torch.randint(0, a.vocab, (batch, a.seq), generator=g)
    y = torch.randint(0, a.vocab, (batch, a.seq), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = wrapped(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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
    results.put((rank, sorted(times)[len(times) // 2], peak_rss_mib()))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="small", choices=sorted(PRESETS))
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="per rank")
    ap.add_argument("--worlds", default="1,2")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    for world in (int(w) for w in a.worlds.split(",")):
        results = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=rank_main, args=(r, world, a, port, results))
                 for r in range(world)]
        for p in procs:
            p.start()
        got = sorted(results.get(timeout=900) for _ in procs)
        for p in procs:
            p.join()
        step_s = got[0][1]
        print(json.dumps({
            "world": world, "batch_per_rank": a.global_batch // world,
            "threads": a.threads, "step_s": step_s,
            "tokens_per_s": a.global_batch * a.seq / step_s,
            "peak_rss_mib_per_rank": max(r[2] for r in got),
            "torch": torch.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
