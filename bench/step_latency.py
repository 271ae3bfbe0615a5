"""Per-step latency and bytes of the built-in model under Ulysses, Ring and USP.

    python bench/step_latency.py --images 8 --repeats 7 > bench/results.md

One denoising step = one transformer forward on the guided batch (2 × images: conditional and
unconditional). For each layout this starts the ranks (OMP_NUM_THREADS=1 each), warms up, then
times ``--repeats`` forwards with a barrier around each and reports the median, the bytes each
rank sent per step by link class against the formula, and the max relative error against the
single-process output. All layouts run in one invocation, one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

LAYOUTS = [  # (name, world, ulysses, ring)
    ("single", 1, 1, 1),
    ("ulysses", 2, 2, 1), ("ring", 2, 1, 2),
    ("ulysses", 4, 4, 1), ("ring", 4, 1, 4), ("usp", 4, 2, 2),
]


def formula_bytes(model, images: int, ulysses: int, ring: int) -> int:
    """Bytes one rank sends per forward: per layer Ulysses 4·(U−1)/U and Ring (R−1)·2 of the local
    Q/K/V shard, plus the (P−1) copies of its hidden-state shard in the gather at the exit."""
    cfg = model.config
    tokens = (cfg.sample_size // cfg.patch_size) ** 2
    p = ulysses * ring
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    shard = 2 * images * (tokens // p) * hidden * 4  # fp32 bytes of one of Q, K, V on one rank
    per_layer = 4 * (ulysses - 1) * shard // ulysses + (ring - 1) * 2 * shard
    return cfg.num_layers * per_layer + (p - 1) * shard


def bench_rank(ulysses: int, ring: int, images: int, repeats: int, out_path: str) -> None:
    import torch.distributed as dist

    from swiftfusion import ParallelConfig, comm, parallelize, runtime
    from swiftfusion.bench import guided_batch
    from swiftfusion.models import digits

    torch.set_num_threads(1)
    model = digits.load_transformer()
    x, t, y = guided_batch(images)
    with torch.no_grad():
        reference = model(x, t, y).sample if runtime.rank() == 0 else None
        if runtime.world_size() > 1 or ulysses * ring > 1:
            parallelize(model, ParallelConfig(ulysses_degree=ulysses, ring_degree=ring))
        barrier = dist.barrier if dist.is_initialized() else (lambda: None)
        for _ in range(2):
            model(x, t, y)
        times = []
        comm.traffic.reset()
        for _ in range(repeats):
            barrier()
            start = time.perf_counter()
            output = model(x, t, y).sample
            barrier()
            times.append(time.perf_counter() - start)
        sent = {k: v // repeats for k, v in comm.traffic.snapshot().items()}
    if runtime.rank() == 0:
        error = float((output - reference).abs().max() / reference.abs().max())
        result = dict(step_ms=statistics.median(times) * 1e3, bytes=sent,
                      formula=formula_bytes(model, images, ulysses, ring), max_rel_err=error)
        with open(out_path, "w") as f:
            json.dump(result, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    from swiftfusion.launch import launch

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, world, ulysses, ring in LAYOUTS:
            path = os.path.join(scratch, f"{name}{world}.json")
            call = (ulysses, ring, args.images, args.repeats, path)
            if world == 1:
                bench_rank(*call)
            else:
                launch(bench_rank, call, nproc=world)
            with open(path) as f:
                rows.append((name, world, ulysses, ring, json.load(f)))
            print(json.dumps(dict(layout=name, ranks=world, **rows[-1][-1])), file=sys.stderr, flush=True)
    base = rows[0][-1]["step_ms"]
    print(f"Built-in digits DiT, {2 * args.images} samples per step (CFG batch), fp32, median of {args.repeats}.\n")
    print("| layout | ranks | U×R | step (ms) | speed-up vs 1 rank | bytes sent/rank/step (intra) | formula "
          "| max rel err |")
    print("|---|---|---|---|---|---|---|---|")
    for name, world, ulysses, ring, r in rows:
        print(f"| {name} | {world} | {ulysses}×{ring} | {r['step_ms']:.1f} | {base / r['step_ms']:.2f}× | "
              f"{r['bytes']['intra']:,} | {r['formula']:,} | {r['max_rel_err']:.1e} |")


if __name__ == "__main__":
    main()
