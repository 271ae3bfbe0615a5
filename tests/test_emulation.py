"""The emulated cluster (namespaces as nodes, shaped veth links) and ``swiftfusion bench attention``."""

import json
import re
import subprocess
import sys

import pytest

from swiftfusion import ParallelConfig, Topology, cli
from swiftfusion.bench import layout_options
from swiftfusion.emulation import ClusterRunError, EmulatedCluster, burst_bytes
from swiftfusion.planner import attention_traffic

SHAPE = dict(seq=512, heads=4, head_dim=16)


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def _bench(*flags, seq=SHAPE["seq"]):
    command = [sys.executable, "-m", "swiftfusion", "bench", "attention", "--nodes", "2", "--ranks-per-node", "2",
               "--seq", str(seq), "--heads", str(SHAPE["heads"]), "--head-dim", str(SHAPE["head_dim"]),
               "--json", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _expected_bytes(layout):
    config = ParallelConfig(**layout_options(layout, 2, 2))
    model = attention_traffic(config, Topology(4, 2), config.sp_layout, batch=1, heads=SHAPE["heads"],
                              tokens=SHAPE["seq"], head_dim=SHAPE["head_dim"])
    return {"inter_node_bytes": model["inter"], "intra_node_bytes": model["intra"]}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("link", [[], ["--link-gbit", "1"]], ids=["loopback", "emulated-1gbit"])
def test_bench_attention_is_exact_and_counts_bytes(link):
    layouts = ["usp", "tas", "tapa", "tapa-vfirst", "torus"]
    before = _namespaces()
    results = _bench("--layout", ",".join(layouts), "--transport", "collective,one_sided", "--repeats", "2", *link)
    assert [(r["layout"], r["transport"]) for r in results] == [(x, t) for x in layouts
                                                               for t in ("collective", "one_sided")]
    for r in results:
        assert set(r) >= {"layout", "layer_ms", "inter_node_bytes", "intra_node_bytes", "max_rel_err"}
        assert r["max_rel_err"] <= 1e-4 and r["layer_ms"] > 0
        assert {k: r[k] for k in ("inter_node_bytes", "intra_node_bytes")} == _expected_bytes(r["layout"])
    assert _namespaces() == before  # the cluster was taken down


@pytest.mark.timeout(300)
def test_links_are_shaped():
    (result,) = _bench("--layout", "usp", "--repeats", "3", "--link-gbit", "0.1", seq=2048)
    # Each direction of the one inter-node link carries half the inter-node bytes of a layer; all
    # but the bucket's worth must go at the shaped rate.
    per_direction = result["inter_node_bytes"] / 2
    assert per_direction > 10 * burst_bytes(0.1)
    floor_ms = (per_direction - burst_bytes(0.1)) * 8 / 0.1e9 * 1e3
    assert result["layer_ms"] >= floor_ms


@pytest.mark.timeout(120)
def test_failed_run_names_the_node_and_leaves_nothing_behind(tmp_path):
    failing = tmp_path / "fail.py"
    failing.write_text("import os, sys\nsys.exit(3 if os.environ['RANK'] == '1' else 0)\n")
    cluster = EmulatedCluster(2, 1.0)
    try:
        assert cluster.tag in _namespaces()
        with pytest.raises(ClusterRunError, match=r"^node 1 failed \(exit code 1\):"):
            cluster.torchrun(1, [str(failing)], timeout_s=60)
    finally:
        cluster.close()
    assert cluster.tag not in _namespaces()


def test_bench_bad_input_is_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "attention", "--layout", "usp,torus9"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "swiftfusion: error: unknown layout 'torus9'; allowed: usp, tas, ulysses, tapa, tapa-vfirst, torus, ring"
    )
    with pytest.raises(ValueError, match=re.escape("link_gbit must be a positive number, got 0")):
        EmulatedCluster(2, 0)


@pytest.mark.timeout(300)
def test_bench_step_is_exact_and_counts_bytes():
    command = [sys.executable, "-m", "swiftfusion", "bench", "step", "--nodes", "2", "--ranks-per-node", "1",
               "--layout", "usp,torus", "--images", "1", "--repeats", "1", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    results = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["layout"] for r in results] == ["usp", "torus"]
    for r in results:
        config = ParallelConfig(**layout_options(r["layout"], 2, 1))
        # The built-in model: 4 layers of 4 heads × 16 over 256 tokens; 2 samples (CFG) per image.
        per_layer = attention_traffic(config, Topology(2, 1), "usp", batch=2, heads=4, tokens=256, head_dim=16)
        gather = 2 * (2 * 128 * 64 * 4)  # each rank's hidden-state shard to the other, after the last block
        assert r["inter_node_bytes"] == 4 * per_layer["inter"] + gather and r["intra_node_bytes"] == 0
        assert r["max_rel_err"] <= 1e-4 and r["step_ms"] > 0
