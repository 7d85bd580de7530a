#!/usr/bin/env python3
"""Peak resident memory of a command, before and after its first checkpoint.

    python3 scripts/peak_rss.py --marker 'RUN/checkpoints/*step_*' -- kiln pretrain ...

Samples the child's VmRSS every 10 ms; prints one JSON line with the peak
before any path matching --marker existed (training alone), and the whole
run's peak (the kernel's ru_maxrss of the child, checkpoints included).
Used for issue 17's figures in docs/perf.md.
"""
import argparse
import glob
import json
import os
import subprocess
import time


def vm_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--marker", required=True, help="glob that appears when the first checkpoint starts")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    t0 = time.time()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    before, marker_at = 0, None
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if marker_at is None and glob.glob(a.marker):
            marker_at = time.time() - t0
        if marker_at is None:
            before = max(before, vm_rss_kib(child.pid))
        time.sleep(0.01)
    print(json.dumps({
        "exit": os.waitstatus_to_exitcode(status),
        "peak_rss_before_checkpoint_mib": round(before / 1024, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "first_checkpoint_at_s": marker_at,
        "wall_s": round(time.time() - t0, 1),
    }))


if __name__ == "__main__":
    main()
