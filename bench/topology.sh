#!/usr/bin/env bash
# Issue 4's comparison, all in one run, on emulated clusters (network namespaces, tbf-shaped links)
# and on loopback. Needs root (ip netns, tc). Writes JSON lines; tables: python bench/tables.py FILE.
# About 25 minutes on the 2-core box.
#   bash bench/topology.sh > bench/results-topology.jsonl
# Attention rows (layer_ms): one layer, 4096 tokens, 8 heads × 32, fp32. Step rows (step_ms): one
# denoising step of the built-in model (8 images: 16 samples with CFG, 256 tokens, 4 layers).
set -euo pipefail
layer=(attention --seq 4096 --heads 8 --head-dim 32 --repeats 5 --json)
step=(step --images 8 --repeats 5 --json)
run() { python -m swiftfusion bench "$@"; }
for link in "" 1 0.1 0.03; do
  flags=(); [ -n "$link" ] && flags=(--link-gbit "$link")
  # 2 nodes × 1 rank: fits the 2 cores.
  run "${layer[@]}" --nodes 2 --ranks-per-node 1 --layout usp,tas,torus "${flags[@]}"
  # 2 nodes × 2 ranks: 4 ranks on 2 cores (oversubscribed), every layout, both transports.
  run "${layer[@]}" --nodes 2 --ranks-per-node 2 --layout usp,tas,tapa,tapa-vfirst,torus \
    --transport collective,one_sided "${flags[@]}"
  # 4 nodes × 1 rank: 4 ranks on 2 cores. TAPA and one-sided need several ranks per node.
  run "${layer[@]}" --nodes 4 --ranks-per-node 1 --layout usp,tas,torus "${flags[@]}"
done
for link in 0.1 0.03; do
  # 4 nodes × 2 ranks: 8 ranks on 2 cores (4 per core): communication-bound only at slow links.
  run "${layer[@]}" --nodes 4 --ranks-per-node 2 --layout usp,tas,tapa,tapa-vfirst,torus \
    --transport collective,one_sided --link-gbit "$link"
  # Per-step latency of the built-in model.
  run "${step[@]}" --nodes 2 --ranks-per-node 2 --layout usp,tas,tapa-vfirst,torus \
    --transport collective,one_sided --link-gbit "$link"
  run "${step[@]}" --nodes 4 --ranks-per-node 1 --layout usp,tas,torus --link-gbit "$link"
  run "${step[@]}" --nodes 4 --ranks-per-node 2 --layout usp,tas,tapa-vfirst,torus \
    --transport collective,one_sided --link-gbit "$link"
done
