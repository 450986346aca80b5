#!/usr/bin/env python3
"""Speed of `calico predict` with its thread settings, side by side in one run.

    python3 tools/bench/predict_bench.py --data mixedparts/test_300.jsonl
        [--weights assets/demo-model] [--calico target/release/calico] [--repeats 2]
        [--baseline OTHER_CALICO] [--args "--max-new-tokens 48 --quantized-llm"]

Answers the same samples with the same weights three ways, each `--repeats`
times in turn (so that a slow spell of a shared machine spreads over all
rows):

  candle threads   --workers 1: one sample at a time, candle's own threads
                   in every kernel (what `calico predict` did before --workers)
  1 thread         --workers 1 with RAYON_NUM_THREADS=1
  N workers        --workers N (the default for `tiny` on an N-core machine):
                   N samples at once, each with single-threaded kernels

With --baseline, every row is run with that binary too (e.g. a build of
the commit before a change), in the same rounds, and listed under the
first. --args adds arguments to every `calico predict` (split like a shell
line).

Each row: the best wall time, samples/s, user CPU time and peak resident
memory (GNU time), and whether the predictions file is byte for byte the
first row's. Exits 1 when one of --calico's rows differs (a baseline's
answers may differ from a changed build's; its rows only report it).
"""
import argparse
import filecmp
import os
import shlex
import subprocess
import sys
import tempfile


def run(calico, data, weights, out, workers, env_extra, extra):
    env = dict(os.environ)
    env.pop("RAYON_NUM_THREADS", None)
    env.update(env_extra)
    cmd = ["/usr/bin/time", "-f", "%e %U %M", calico, "predict", "--data", data,
           "--weights", weights, "--out", out, "--workers", str(workers)] + extra
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    wall, user, rss = p.stderr.strip().splitlines()[-1].split()
    return float(wall), float(user), int(rss)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="samples file to answer")
    ap.add_argument("--weights", default="assets/demo-model")
    ap.add_argument("--calico", default="target/release/calico")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--baseline", help="a second calico binary run beside --calico")
    ap.add_argument("--args", default="", help="more `calico predict` arguments")
    a = ap.parse_args()
    extra = shlex.split(a.args)
    if not os.path.isfile("/usr/bin/time"):
        sys.exit("needs GNU time (/usr/bin/time; Debian package `time`)")
    cores = os.cpu_count() or 1
    settings = [
        ("candle threads (--workers 1)", 1, {}),
        ("1 thread (--workers 1, RAYON_NUM_THREADS=1)", 1, {"RAYON_NUM_THREADS": "1"}),
        (f"{cores} workers (--workers {cores}, the default)", cores, {}),
    ]
    binaries = [("", a.calico)] + ([("baseline: ", a.baseline)] if a.baseline else [])
    rows = [(tag + name, calico, workers, env)
            for tag, calico in binaries for name, workers, env in settings]
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"row{i}.jsonl") for i in range(len(rows))]
        for _ in range(a.repeats):
            for i, (_, calico, workers, env) in enumerate(rows):
                wall, user, rss = run(calico, a.data, a.weights, outs[i], workers, env, extra)
                if i not in best or wall < best[i][0]:
                    best[i] = (wall, user, rss)
        n = sum(1 for _ in open(outs[0]))
        same = [filecmp.cmp(outs[0], o, shallow=False) for o in outs]
    print(f"calico predict {a.args}".rstrip() +
          f", {n} samples of {a.data}, weights {a.weights}, best of {a.repeats}")
    if a.baseline:
        print(f"rows without a tag: {a.calico}; baseline: {a.baseline}")
    print()
    print("| run | wall | samples/s | user CPU | peak RSS | same predictions |")
    print("|---|---:|---:|---:|---:|---|")
    for i, (name, _, _, _) in enumerate(rows):
        wall, user, rss = best[i]
        print(f"| {name} | {wall:.1f} s | {n / wall:.1f} | {user:.1f} s | "
              f"{rss / 1024:.0f} MiB | {'yes' if same[i] else 'NO'} |")
    if not all(same[:len(settings)]):
        sys.exit(1)


if __name__ == "__main__":
    main()
