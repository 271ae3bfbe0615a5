"""One transformer step of a tiny-but-not-trivial Flux (1 double + 3 single blocks, 8 heads × 32,
4096 image + 32 text tokens, fp32) at 1, 2 and 4 ranks: plain diffusers in one process,
swiftfusion (Ulysses, Ring, USP), and the peers' sequence-parallel paths that run on CPU:
diffusers' own context parallelism (Ulysses; Ring with the CPU flash kernel), ParaAttention's
Ulysses and yunchang's Ulysses. All in one invocation, one method after another:

    python bench/flux_step.py --repeats 3 > bench/results-flux.jsonl

Each method runs in fresh processes (``OMP_NUM_THREADS=1`` each): one forward after a warm-up
measures peak memory (the peak of torch's CPU allocations during the forward, from the profiler's
memory events: the activation memory of that rank), then ``--repeats`` timed forwards (median;
barrier around each), then rank 0 compares the output with the single-process output of the same
weights and inputs. ParaAttention and yunchang are not dependencies of swiftfusion; install them
to include them (``pip install --no-deps para-attn==0.3.38 yunchang==0.6.4``); a method whose
package is missing is reported as skipped. yunchang does not split sequences itself: it runs
inside swiftfusion's Flux plan (same token split), its torch-flash kernel pointed at PyTorch's
CPU flash kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import torch

FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=3, attention_head_dim=32,
            num_attention_heads=8, joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(4, 14, 14))
IMAGE_SIDE, TEXT_TOKENS = 64, 32  # 64 × 64 = 4096 image tokens
METHODS = {  # name: (package it needs, ranks it runs on)
    "diffusers": (None, (1,)),
    "swiftfusion-ulysses": (None, (2, 4)),
    "swiftfusion-ring": (None, (2, 4)),
    "swiftfusion-usp": (None, (4,)),
    "diffusers-cp-ulysses": (None, (2, 4)),
    "diffusers-cp-ring": (None, (2, 4)),
    "para-attn-ulysses": ("para_attn", (2, 4)),
    "yunchang-ulysses": ("yunchang", (2, 4)),
}


def build():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**FLUX).eval()
    g = torch.Generator().manual_seed(1)
    rows, cols = torch.arange(float(IMAGE_SIDE)), torch.arange(float(IMAGE_SIDE))
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), rows, cols, indexing="ij"), -1).reshape(-1, 3)
    inputs = dict(
        hidden_states=torch.randn(1, IMAGE_SIDE * IMAGE_SIDE, 16, generator=g),
        encoder_hidden_states=torch.randn(1, TEXT_TOKENS, 64, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
        img_ids=img_ids, txt_ids=torch.zeros(TEXT_TOKENS, 3),
        return_dict=False,  # diffusers' context-parallel hooks expect a tuple
    )
    return model, inputs


@contextlib.contextmanager
def _one_accelerator():
    """diffusers' enable_parallelism divides by torch.accelerator.device_count(), 0 without a GPU."""
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def _cpu_flash_for_diffusers_ring() -> None:
    """diffusers' ring attention needs each block's log-sum-exp; its ``_native_flash`` backend
    calls a flash op that has no CPU kernel: give it the CPU flash kernel (same outputs)."""
    aten = torch.ops.aten
    cpu_flash = aten._scaled_dot_product_flash_attention_for_cpu

    def flash(query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False, scale=None):
        out, lse = cpu_flash(query, key, value, dropout_p, is_causal, scale=scale)
        return out, lse, None, None, 0, 0, None, None, None

    import diffusers.models.attention_dispatch as dispatch

    dispatch.torch.ops.aten._scaled_dot_product_flash_attention = flash  # noqa: SLF001 - benchmark shim


def parallel(method: str, model, world: int):
    from swiftfusion import ParallelConfig, parallelize

    if method.startswith("swiftfusion-"):
        degrees = {"ulysses": dict(ulysses_degree=world), "ring": dict(ring_degree=world),
                   "usp": dict(ulysses_degree=2, ring_degree=world // 2)}[method.split("-")[1]]
        return parallelize(model, ParallelConfig(collective_timeout_s=600, **degrees))
    if method.startswith("diffusers-cp-"):
        from diffusers import ContextParallelConfig

        if method.endswith("ring"):
            _cpu_flash_for_diffusers_ring()
            model.set_attention_backend("_native_flash")
        degree = {"ulysses_degree": world} if method.endswith("ulysses") else {"ring_degree": world}
        with _one_accelerator():
            model.enable_parallelism(config=ContextParallelConfig(**degree))
        return model
    if method == "para-attn-ulysses":
        import para_attn.para_attn_interface as interface
        from para_attn.context_parallel import init_context_parallel_mesh
        from para_attn.context_parallel.diffusers_adapters.flux import parallelize_transformer

        ulysses = interface.ulysses_attn_func

        def without_gqa(*args, enable_gqa=False, **kwargs):  # diffusers 0.42 passes it; ParaAttention does not take it
            return ulysses(*args, **kwargs)

        interface.ulysses_attn_func = without_gqa
        return parallelize_transformer(model, mesh=init_context_parallel_mesh("cpu"))
    if method == "yunchang-ulysses":
        # yunchang does not split the sequence itself: swiftfusion's Flux plan splits the image and
        # text tokens (and their rotary ids) and gathers the output; inside each attention module
        # yunchang's LongContextAttention (ring degree 1) runs instead of swiftfusion's.
        import torch.distributed as dist
        import yunchang.kernels.attention as kernels
        from yunchang import LongContextAttention, set_seq_parallel_pg
        from yunchang.kernels import AttnType

        import swiftfusion.models.plan as plan

        kernels._scaled_dot_product_flash_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        set_seq_parallel_pg(world, 1, dist.get_rank(), world)
        attention = LongContextAttention(attn_type=AttnType.TORCH_FLASH)

        def yunchang_attention(mesh, v, project_qk, key_mask=None, scale=None, scattered_v=None):
            q, k = project_qk()
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # yunchang takes [batch, tokens, heads, dim]
            return attention(q, k, v, softmax_scale=scale).transpose(1, 2)

        plan.configured_attention = yunchang_attention
        return parallelize(model, ParallelConfig(ulysses_degree=world, collective_timeout_s=600))
    raise ValueError(method)


class PeakTorchMemory:
    """Peak of the CPU memory held by torch tensors allocated in the block (the activations), from
    the profiler's allocation and free events in time order."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self.profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.profile.__enter__()
        return self

    def __exit__(self, *exc):
        self.profile.__exit__(*exc)
        events = sorted((e for e in self.profile.events() if e.self_cpu_memory_usage),
                        key=lambda e: e.time_range.start)
        live = peak = 0
        for event in events:
            live += event.self_cpu_memory_usage
            peak = max(peak, live)
        self.delta_mb = peak / 2**20


def rank_main(method: str, world: int, repeats: int, out_path: str) -> None:
    import torch.distributed as dist

    from swiftfusion import runtime

    torch.set_num_threads(1)
    runtime.init_distributed(600)
    barrier = dist.barrier if dist.is_initialized() else (lambda: None)
    model, inputs = build()
    if world > 1:
        model = parallel(method, model, world)
    with torch.no_grad():
        model(**inputs)  # warm-up
        barrier()
        with PeakTorchMemory() as memory:
            output = model(**inputs)[0]
        times = []
        for _ in range(repeats):
            barrier()
            start = time.perf_counter()
            model(**inputs)
            barrier()
            times.append(time.perf_counter() - start)
        peaks = torch.tensor([memory.delta_mb])
        if dist.is_initialized():
            every = [torch.zeros(1) for _ in range(world)]
            dist.all_gather(every, peaks)
            peaks = torch.cat(every)
        if runtime.rank() == 0:
            reference_model, _ = build()
            reference = reference_model(**inputs)[0]
            error = float((output - reference).abs().max() / reference.abs().max())
            result = dict(method=method, ranks=world, step_ms=round(statistics.median(times) * 1e3, 1),
                          peak_activation_mb_per_rank=round(float(peaks.max()), 1), max_rel_err=error)
            with open(out_path, "w") as f:
                json.dump(result, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    from importlib.util import find_spec

    from swiftfusion.launch import launch

    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods.split(","):
            package, worlds = METHODS[method]
            for world in worlds:
                if package is not None and find_spec(package) is None:
                    print(json.dumps(dict(method=method, ranks=world, skipped=f"{package} is not installed")))
                    continue
                path = os.path.join(scratch, f"{method}-{world}.json")
                launch(rank_main, (method, world, args.repeats, path), nproc=world)
                with open(path) as f:
                    print(f.read(), flush=True)
                print(f"{method} at {world} done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
