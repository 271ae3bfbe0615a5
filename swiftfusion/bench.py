"""``swiftfusion bench attention`` (one sequence-parallel attention layer) and ``swiftfusion bench
step`` (one denoising step of the built-in model) under several layouts.

For each layout it starts the ranks (locally, or in the emulated cluster when link flags are given),
times the layer or step (median of ``--repeats`` after a warm-up, a barrier around each run), counts the
bytes it sends per link class (summed over all ranks, one layer or step) and compares the output with the
single-process reference. It prints one JSON object per layout on its own line.

Layouts (U×R: Ulysses × Ring degrees; N nodes of M ranks):
- ``usp``: xDiT's placement, Ulysses inside a node (U=M), Ring across nodes (R=N);
- ``tas``: the reversed placement, Ulysses across nodes (U=N), Ring inside a node (R=M);
- ``ulysses``: Ulysses over all ranks (flat all-to-all); ``tapa``: the same with TAPA;
  ``tapa-vfirst``: TAPA with V's all-to-all started first; ``torus``: Torus attention over all ranks;
- ``ring``: Ring over all ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

TRANSPORTS = ("collective", "one_sided")
LAYOUTS = ("usp", "tas", "ulysses", "tapa", "tapa-vfirst", "torus", "ring")


def layout_options(layout: str, nodes: int, ranks_per_node: int) -> dict:
    world = nodes * ranks_per_node
    return {
        "usp": dict(ulysses_degree=ranks_per_node, ring_degree=nodes, sp_layout="usp"),
        "tas": dict(ulysses_degree=nodes, ring_degree=ranks_per_node, sp_layout="tas"),
        "ulysses": dict(ulysses_degree=world),
        "tapa": dict(ulysses_degree=world, all_to_all="tapa"),
        "tapa-vfirst": dict(ulysses_degree=world, all_to_all="tapa", v_first=True),
        "torus": dict(ulysses_degree=world, sp_algorithm="torus"),
        "ring": dict(ring_degree=world),
    }[layout]


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks", description="Benchmarks.")
    kinds = bench.add_subparsers(dest="bench", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nodes", type=int, default=2)
    common.add_argument("--ranks-per-node", "--ranks_per_node", type=int, default=2)
    common.add_argument("--layout", default="usp,tas", help=f"comma-separated, from: {', '.join(LAYOUTS)}")
    common.add_argument("--transport", default="collective",
                        help="comma-separated, from: collective, one_sided (each layout runs with each)")
    common.add_argument("--repeats", type=int, default=5)
    common.add_argument("--link-gbit", "--link_gbit", type=float,
                        help="run in the emulated cluster with inter-node links shaped to this rate")
    common.add_argument("--json", action="store_true", help="JSON lines only (default: also a table)")
    common.add_argument("--result-file", help=argparse.SUPPRESS)  # worker mode: a rank of one layout
    att = kinds.add_parser("attention", parents=[common], help="one attention layer under several layouts")
    att.add_argument("--seq", type=int, default=4096, help="tokens")
    att.add_argument("--heads", type=int, default=8)
    att.add_argument("--head-dim", "--head_dim", type=int, default=64)
    att.add_argument("--batch", type=int, default=1)
    step = kinds.add_parser("step", parents=[common],
                            help="one denoising step of the built-in model under several layouts")
    step.add_argument("--images", type=int, default=8, help="images per step (the batch is twice that: CFG)")


WORKLOAD_FLAGS = {"attention": ("seq", "heads", "head_dim", "batch"), "step": ("images",)}


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--{what} names nothing; allowed: {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown {what} {name!r}; allowed: {', '.join(allowed)}")
    return names


def check_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Validates everything; returns the (layout, transport) pairs to run, in order."""
    layouts = _names(args.layout, LAYOUTS, "layout")
    transports = _names(args.transport, TRANSPORTS, "transport")
    for flag in ("nodes", "ranks_per_node", "repeats", *WORKLOAD_FLAGS[args.bench]):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.link_gbit is not None and not args.link_gbit > 0:
        raise ValueError(f"--link-gbit must be a positive number, got {args.link_gbit}")
    return [(layout, transport) for layout in layouts for transport in transports]


def attention_rank(layout: str, transport: str, args: argparse.Namespace, result_file: str) -> None:
    """One rank's share of one layout's measurement; rank 0 writes the result."""
    import torch

    from . import comm, runtime
    from .attention import configured_attention
    from .config import ParallelConfig
    from .mesh import build_mesh
    from .sequence import SequenceShard

    torch.set_num_threads(1)
    runtime.init_distributed(120)
    comm.set_timeout(120)
    config = ParallelConfig(**layout_options(layout, args.nodes, args.ranks_per_node), transport=transport,
                            collective_timeout_s=120)
    mesh = build_mesh(config, args.ranks_per_node)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, args.seq, args.head_dim, generator=g) for _ in range(3))
    shard = SequenceShard.for_length(args.seq, mesh.sp)
    key_mask = shard.key_mask(args.batch, q.device)
    ql, kl, vl = (shard.shard(t, dim=2) for t in (q, k, v))

    def layer() -> torch.Tensor:
        return configured_attention(mesh, vl, lambda: (ql, kl), key_mask)

    out, sent, step_ms = _measure(layer, args.repeats)
    full = shard.gather(out, dim=2)
    if runtime.rank() == 0:
        reference = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        _write_result(result_file, layout, transport, args, config, sent, full, reference, layer_ms=step_ms)


def _measure(run, repeats: int):
    """Warm-up, one counted run (bytes per link class summed over ranks), then ``repeats`` timed
    runs with a barrier around each; returns (the counted run's output, [intra, inter] bytes,
    median ms)."""
    import torch
    import torch.distributed as dist

    from . import comm

    run()  # warm-up
    comm.traffic.reset()
    out = run()
    sent = torch.tensor([comm.traffic.bytes["intra"], comm.traffic.bytes["inter"]], dtype=torch.float64)
    dist.all_reduce(sent)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        run()
        dist.barrier()
        times.append(time.perf_counter() - start)
    return out, sent, round(statistics.median(times) * 1e3, 3)


def _write_result(path: str, layout: str, transport: str, args: argparse.Namespace, config, sent, out, reference,
                  **timing) -> None:
    error = float((out - reference).abs().max() / reference.abs().max())
    result = dict(layout=layout, transport=transport, nodes=args.nodes, ranks_per_node=args.ranks_per_node,
                  ulysses=config.ulysses_degree, ring=config.ring_degree, **timing,
                  inter_node_bytes=int(sent[1]), intra_node_bytes=int(sent[0]), max_rel_err=error,
                  link_gbit=args.link_gbit)
    with open(path, "w") as f:
        json.dump(result, f)


def guided_batch(images: int):
    """The built-in model's input for one guided step: ``images`` conditional samples, then as
    many unconditional ones (one transformer forward serves both CFG branches)."""
    import torch

    from .models import digits

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * images, 1, digits.IMAGE_SIZE, digits.IMAGE_SIZE, generator=g)
    labels = torch.cat([torch.arange(images) % 10, torch.full((images,), digits.NULL_CLASS)])
    return x, torch.full((2 * images,), 500.0), labels


def step_rank(layout: str, transport: str, args: argparse.Namespace, result_file: str) -> None:
    """One rank's share of one layout's denoising-step measurement; rank 0 writes the result."""
    import torch

    from . import runtime
    from .config import ParallelConfig
    from .models import digits
    from .pipelines import parallelize

    torch.set_num_threads(1)
    runtime.init_distributed(120)
    config = ParallelConfig(**layout_options(layout, args.nodes, args.ranks_per_node), transport=transport,
                            collective_timeout_s=120)
    model = digits.load_transformer()
    x, t, y = guided_batch(args.images)
    with torch.no_grad():
        reference = model(x, t, y).sample if runtime.rank() == 0 else None
        parallelize(model, config, args.ranks_per_node)
        out, sent, step_ms = _measure(lambda: model(x, t, y).sample, args.repeats)
    if runtime.rank() == 0:
        _write_result(result_file, layout, transport, args, config, sent, out, reference, images=args.images,
                      step_ms=step_ms)


RANK_MAINS = {"attention": attention_rank, "step": step_rank}


def run(args: argparse.Namespace) -> list[dict]:
    """Runs every layout, one after another; returns their results in order."""
    from .emulation import EmulatedCluster
    from .launch import launch

    runs = check_args(args)
    results = []
    with tempfile.TemporaryDirectory(prefix="swiftfusion-bench-") as scratch:
        cluster = EmulatedCluster(args.nodes, args.link_gbit) if args.link_gbit is not None else None
        try:
            for layout, transport in runs:
                path = os.path.join(scratch, f"{layout}-{transport}.json")
                if cluster is None:
                    launch(RANK_MAINS[args.bench], (layout, transport, args, path),
                           nproc=args.nodes * args.ranks_per_node)
                else:
                    flags = _worker_flags(args, layout, transport, path)
                    worker = ["-m", "swiftfusion", "bench", args.bench, *flags]
                    cluster.torchrun(args.ranks_per_node, worker)
                with open(path) as f:
                    results.append(json.load(f))
        finally:
            if cluster is not None:
                cluster.close()
    return results


def _worker_flags(args: argparse.Namespace, layout: str, transport: str, path: str) -> list[str]:
    flags = ["--layout", layout, "--transport", transport, "--result-file", path]
    for name in ("nodes", "ranks_per_node", "repeats", "link_gbit", *WORKLOAD_FLAGS[args.bench]):
        flags += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return flags


def main(args: argparse.Namespace) -> int:
    if args.result_file is not None:  # a rank started by torchrun inside the emulated cluster
        from .runtime import run_rank_main

        run_rank_main(RANK_MAINS[args.bench], args.layout, args.transport, args, args.result_file)
        return 0
    results = run(args)
    for result in results:
        print(json.dumps(result), flush=True)
    if not args.json:
        timed = "layer_ms" if args.bench == "attention" else "step_ms"
        print(f"\n| layout | transport | U×R | {timed.replace('_', ' ')} | inter-node bytes | intra-node bytes "
              "| max rel err |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['layout']} | {r['transport']} | {r['ulysses']}×{r['ring']} | {r[timed]:.2f} "
                  f"| {r['inter_node_bytes']:,} | {r['intra_node_bytes']:,} | {r['max_rel_err']:.1e} |")
    return 0
