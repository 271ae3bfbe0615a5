#!/usr/bin/env bash
# Issue 4's comparison, all in one run: one attention layer (8 heads × 32, 4096 tokens, fp32) per
# layout, on emulated clusters (network namespaces, tbf-shaped links) at several link speeds and
# on loopback. Needs root (ip netns, tc). Prints JSON lines; usage: bash bench/topology.sh > out.jsonl
set -euo pipefail
shape=(--seq 4096 --heads 8 --head-dim 32 --repeats 5 --json)
for link in "" 1 0.1 0.03; do
  flags=(); [ -n "$link" ] && flags=(--link-gbit "$link")
  # 2 nodes × 1 rank: fits the 2 cores.
  python -m swiftfusion bench attention --nodes 2 --ranks-per-node 1 --layout usp,tas,torus "${shape[@]}" "${flags[@]}"
  # 2 nodes × 2 ranks: 4 ranks on 2 cores (oversubscribed), every layout, both transports.
  python -m swiftfusion bench attention --nodes 2 --ranks-per-node 2 --layout usp,tas,tapa,tapa-vfirst,torus \
    --transport collective,one_sided "${shape[@]}" "${flags[@]}"
done
