"""Markdown tables from ``bench/topology.sh``'s JSON lines: one table per workload and topology,
one column per link speed, each time with its ratio to USP (xDiT's placement) on the same link.

    python bench/tables.py bench/results-topology.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        results = [json.loads(line) for line in f if line.strip()]
    tables: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        workload = "layer" if "layer_ms" in r else "step"
        tables[(workload, r["nodes"], r["ranks_per_node"])].append(r)
    for (workload, nodes, per_node), rows in tables.items():
        timed = f"{workload}_ms"
        links = list(dict.fromkeys(r["link_gbit"] for r in rows))
        usp = {r["link_gbit"]: r[timed] for r in rows if r["layout"] == "usp" and r["transport"] == "collective"}
        by_layout: dict[tuple, dict] = defaultdict(dict)
        for r in rows:
            by_layout[(r["layout"], r["transport"], r["ulysses"], r["ring"])][r["link_gbit"]] = r
        ranks = nodes * per_node
        print(f"#### {'One attention layer' if workload == 'layer' else 'One denoising step, built-in model'}: "
              f"{nodes} nodes × {per_node} rank{'s' if per_node > 1 else ''} ({ranks} ranks on 2 cores)\n")
        speeds = ["loopback" if link is None else f"{link:g} Gbit/s" for link in links]
        print("| layout | transport | U×R | inter-node MB | " + " | ".join(f"{s}: ms (vs USP)" for s in speeds)
              + " | max rel err |")
        print("|---" * (5 + len(links)) + "|")
        for (layout, transport, u, r), by_link in by_layout.items():
            any_row = next(iter(by_link.values()))
            cells = []
            for link in links:
                row = by_link.get(link)
                cells.append("–" if row is None else f"{row[timed]:.0f} ({usp[link] / row[timed]:.2f}×)")
            err = max(row["max_rel_err"] for row in by_link.values())
            print(f"| {layout} | {transport} | {u}×{r} | {any_row['inter_node_bytes'] / 1e6:.2f} | "
                  + " | ".join(cells) + f" | {err:.1e} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1])
