#!/usr/bin/env python3
"""Training speed and peak memory of `calico train` on this machine's CPU.

    python3 tools/bench/train_bench.py [--calico target/release/calico] [--steps 20]
                                       [--gguf models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf]

Generates a small SynthParts set and its MixedParts samples, then runs:

  tiny               every tensor trained from scratch (the tiny recipe), batch 8,
                     candle's own threads (--workers 1)
  tiny, 2 workers    the same samples per step as 4 x 2 micro-batches on two threads,
                     each single-threaded (the default on a 2-core machine)
  tiny-staged, stage 1
                     stage 1 of tools/train/tiny-staged.json (EVA's conv stem, DINOv2 and
                     the Q-Former learn the object classes; 32 images a step, half of them
                     mirrored), 2 workers, timed between its progress lines at steps 50 and
                     --stage1-steps, so the first pass over the images' views is left out
  tiny-staged        stage 2 of tools/train/tiny-staged.json (EVA 112 px, encoders held
                     still), 2 workers
  small (cold cache) the paper's trainable set over SmolLM2-135M (GGUF) with seeded
                     random frozen vision, batch 1 x 4 accumulation on 2 workers,
                     frozen features computed and cached
  small (warm cache) the same steps again over a shared feature cache, on 2 workers
                     and on 1 (candle's own threads), and on 2 workers with the LLM kept
                     in its GGUF blocks (--quantized-llm, QLoRA)

Each row: optimizer steps/s and samples/s (from the run's metrics.jsonl,
excluding the first step), peak resident memory (GNU time's maximum RSS) and
the wall time. The `small` rows are skipped when the GGUF is missing
(bash tools/reference/fetch_llm.sh fetches it).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def timed(cmd):
    """Runs `cmd` under GNU time: its peak RSS in MiB, wall seconds and the process."""
    p = run(["/usr/bin/time", "-v"] + cmd)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", p.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    secs = sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
    return rss / 1024.0, secs, p


def stage1_rate(stderr):
    """Stage-1 steps/s between its first and last progress lines
    (`stage 1 step N/M: ... (T s)`)."""
    marks = [(int(n), float(t)) for n, t in
             re.findall(r"stage 1 step (\d+)/\d+: .*\((\d+(?:\.\d+)?) s\)", stderr)]
    if len(marks) < 2 or marks[-1][1] <= marks[0][1]:
        return float("nan")
    return (marks[-1][0] - marks[0][0]) / (marks[-1][1] - marks[0][1])


def rates(run_dir, per_step):
    recs = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    recs = [r for r in recs if r["kind"] == "train"]
    if len(recs) < 2:
        return float("nan"), float("nan")
    steps = recs[-1]["step"] - recs[0]["step"]
    secs = recs[-1]["elapsed_s"] - recs[0]["elapsed_s"]
    sps = steps / secs
    return sps, sps * per_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calico", default=os.path.join(ROOT, "target", "release", "calico"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--small-steps", type=int, default=4)
    ap.add_argument("--stage1-steps", type=int, default=250)
    ap.add_argument("--gguf", default=os.path.join(
        ROOT, "models", "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    a = ap.parse_args()
    if not os.path.exists(a.calico):
        sys.exit(f"{a.calico} missing: cargo build --release -p calico-cli")
    work = tempfile.mkdtemp(prefix="calico-train-bench-")
    try:
        synth = os.path.join(work, "synth")
        run([a.calico, "data", "synth", "--out", synth, "--images", "60", "--seed", "3"])
        mp = os.path.join(work, "mp")
        run([a.calico, "data", "build", "--out", mp] + sum(
            (["--source", f"{f}={synth}/{f}"] for f in ["paco_lvis", "part_image_net", "ade20k_part234"]), []))
        data = os.path.join(mp, "train.jsonl")
        rows = []

        tiny_rows = [
            ("tiny (all trained, batch 8, candle threads)", [], {}, ["--workers", "1"]),
            ("tiny (all trained, 4 x 2 on 2 workers)", [],
             {"batch_size": 4, "grad_accumulation": 2}, ["--workers", "2"]),
            ("tiny-staged, stage 2 (4 x 2 on 2 workers)",
             ["--model-config", os.path.join(ROOT, "tools", "train", "tiny-staged.model.json")],
             {"batch_size": 4, "grad_accumulation": 2, "freeze": json.load(open(
                 os.path.join(ROOT, "tools", "train", "tiny-staged.json")))["freeze"]},
             ["--workers", "2"]),
        ]
        for k, (label, model, extra, flags) in enumerate(tiny_rows):
            cfg = os.path.join(work, f"tiny{k}.json")
            json.dump(dict({"epochs": 1, "steps_per_epoch": a.steps, "validate_every": 0,
                            "checkpoint_every": a.steps}, **extra), open(cfg, "w"))
            out = os.path.join(work, f"tiny{k}")
            args = model if model else ["--preset", "tiny"]
            rss, wall, _ = timed([a.calico, "train"] + args + ["--data", data, "--config", cfg,
                                                               "--out", out] + flags)
            sps, smp = rates(out, 8)
            rows.append((label, sps, smp, rss, wall))

        staged = json.load(open(os.path.join(ROOT, "tools", "train", "tiny-staged.json")))
        cfg = os.path.join(work, "stage1.json")
        json.dump({"vision_pretrain": dict(staged["vision_pretrain"], steps=a.stage1_steps),
                   "mask_pretrain": None, "val_samples": 0}, open(cfg, "w"))
        out = os.path.join(work, "stage1")
        rss, wall, p = timed([a.calico, "train", "--preset", "tiny-staged", "--data", data,
                              "--config", cfg, "--out", out, "--stop-after", "1",
                              "--workers", "2"])
        sps = stage1_rate(p.stderr)
        batch = staged["vision_pretrain"]["batch_size"]
        rows.append((f"tiny-staged, stage 1 ({batch} images a step on 2 workers; images/s in "
                     "the samples column)", sps, sps * batch, rss, wall))

        if os.path.exists(a.gguf):
            w = os.path.join(work, "w-small")
            run([a.calico, "model", "init", "--preset", "small", "--gguf", a.gguf, "--out", w])
            cfg = os.path.join(work, "small.json")
            json.dump({"epochs": 1, "steps_per_epoch": a.small_steps, "batch_size": 1,
                       "grad_accumulation": 4, "warmup_steps": 1, "validate_every": 0,
                       "checkpoint_every": a.small_steps}, open(cfg, "w"))
            cache = os.path.join(work, "features")
            small_rows = [("cold", 2, []), ("warm", 2, []), ("warm", 1, []),
                          ("warm", 2, ["--quantized-llm"])]
            for k, (label, workers, flags) in enumerate(small_rows):
                out = os.path.join(work, f"small-{k}")
                rss, wall, _ = timed([a.calico, "train", "--preset", "small", "--weights", w,
                                      "--data", data, "--config", cfg, "--out", out,
                                      "--feature-cache", cache, "--workers", str(workers)] + flags)
                sps, smp = rates(out, 4)
                llm = ", LLM kept quantized (QLoRA)" if flags else ""
                rows.append((f"small, paper set ({label} feature cache, {workers} worker"
                             f"{'s' if workers > 1 else ''}{llm})", sps, smp, rss, wall))
        else:
            print(f"note: {a.gguf} missing, small rows skipped", file=sys.stderr)

        print(f"\n`calico train` on {os.cpu_count()} CPU cores\n")
        print("| run | steps/s | samples/s | peak RSS | wall (incl. setup) |")
        print("|---|---:|---:|---:|---:|")
        for name, sps, smp, rss, wall in rows:
            print(f"| {name} | {sps:.3f} | {smp:.2f} | {rss:.0f} MiB | {wall:.0f} s |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
