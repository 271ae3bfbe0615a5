"""An emulated cluster on one machine: network namespaces as nodes, joined through a bridge in a
"switch" namespace by veth links whose rate is shaped with ``tc ... tbf`` in both directions.

Ranks of one node run in its namespace and reach each other over its own loopback (fast); traffic
between nodes crosses the shaped links (slow). Each node starts its ranks with torchrun, so the
rendezvous is a real multi-node one. Everything made here is removed by ``close()`` (also when a
run fails, and at interpreter exit). Needs root and iproute2 (``ip``, ``tc``). Links have no added
delay (netem is not available on these machines; tbf and htb are).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time

from .topology import INTER, LINK_ENV

SUBNET = "10.213.0"  # addresses exist only inside this cluster's own namespaces
MASTER_PORT = 29400
RUN_TIMEOUT_S = 600


def burst_bytes(link_gbit: float) -> int:
    """The tbf bucket: what a link lets through at memory speed before the rate applies."""
    return max(32768, int(link_gbit * 1e9 / 8 / 1000))


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, *args], check=True, capture_output=True, text=True)


class ClusterRunError(RuntimeError):
    """A node's torchrun failed; the message names the node and ends with its output."""


class EmulatedCluster:
    def __init__(self, nodes: int, link_gbit: float) -> None:
        if nodes < 1 or nodes > 200:
            raise ValueError(f"nodes must be from 1 to 200, got {nodes}")
        if not link_gbit > 0:
            raise ValueError(f"link_gbit must be a positive number, got {link_gbit}")
        self.nodes = nodes
        self.link_gbit = link_gbit
        self.tag = f"sf{os.getpid() % 100000}x{id(self) % 1000}"  # names stay within 15 characters
        self.switch = f"{self.tag}sw"
        self.namespaces: list[str] = []
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def node_namespace(self, node: int) -> str:
        return f"{self.tag}n{node}"

    def interface(self, node: int) -> str:
        return f"{self.tag}a{node}"

    def address(self, node: int) -> str:
        return f"{SUBNET}.{node + 1}"

    def _build(self) -> None:
        _ip("ip", "netns", "add", self.switch)
        self.namespaces.append(self.switch)
        _ip("ip", "link", "add", "br0", "type", "bridge", netns=self.switch)
        _ip("ip", "link", "set", "br0", "up", netns=self.switch)
        rate = f"{self.link_gbit * 1000:g}mbit"
        # A small bucket (1 ms of traffic, 32 KiB at least) so that even one layer's messages are
        # held to the rate; a larger one lets whole messages through at memory speed.
        burst = str(burst_bytes(self.link_gbit))
        for node in range(self.nodes):
            ns, inside, outside = self.node_namespace(node), self.interface(node), f"{self.tag}b{node}"
            _ip("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            _ip("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
            _ip("ip", "link", "set", inside, "netns", ns)
            _ip("ip", "link", "set", outside, "netns", self.switch)
            _ip("ip", "link", "set", "lo", "up", netns=ns)
            # Each layer is a burst after an idle barrier: without this, TCP restarts slow start
            # every time (on an RTT the shaper's queue inflates), and timings swing run to run.
            _ip("sysctl", "-q", "-w", "net.ipv4.tcp_slow_start_after_idle=0", netns=ns)
            _ip("ip", "addr", "add", f"{self.address(node)}/24", "dev", inside, netns=ns)
            _ip("ip", "link", "set", inside, "up", netns=ns)
            _ip("ip", "link", "set", outside, "master", "br0", netns=self.switch)
            _ip("ip", "link", "set", outside, "up", netns=self.switch)
            for device, where in ((inside, ns), (outside, self.switch)):  # both directions
                _ip("tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", rate, "burst", burst,
                    "latency", "200ms", netns=where)

    def torchrun(self, nproc_per_node: int, python_args: list[str], timeout_s: float = RUN_TIMEOUT_S) -> list[str]:
        """Runs ``python <python_args>`` as ``nodes × nproc_per_node`` ranks, torchrun on each node;
        returns each node's output. Raises ``ClusterRunError`` naming the first node that failed."""
        processes, logs = [], []
        for node in range(self.nodes):
            command = [
                "ip", "netns", "exec", self.node_namespace(node), sys.executable, "-m", "torch.distributed.run",
                "--nnodes", str(self.nodes), "--nproc-per-node", str(nproc_per_node), "--node-rank", str(node),
                "--master-addr", self.address(0), "--master-port", str(MASTER_PORT), *python_args,
            ]
            env = {**os.environ, "GLOO_SOCKET_IFNAME": self.interface(node), "OMP_NUM_THREADS": "1",
                   LINK_ENV[INTER]: f"{self.link_gbit:g}"}  # ranks' Topology knows the shaped rate
            logs.append(tempfile.TemporaryFile("w+"))  # a file, not a pipe: a full pipe would block the node
            processes.append(subprocess.Popen(command, stdout=logs[-1], stderr=subprocess.STDOUT, text=True, env=env))
        failed = None
        try:
            deadline = time.monotonic() + timeout_s
            # Any node may fail first; the others would then wait in torchrun's exit barrier.
            while failed is None and any(p.poll() is None for p in processes):
                if time.monotonic() > deadline:
                    node = next(n for n, p in enumerate(processes) if p.poll() is None)
                    failed = (node, f"no exit within {timeout_s} s")
                time.sleep(0.1)
                failed = failed or next(((n, f"exit code {p.returncode}") for n, p in enumerate(processes)
                                         if p.poll() not in (None, 0)), None)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
        if failed is not None:
            node, why = failed
            raise ClusterRunError(f"node {node} failed ({why}):\n{outputs[node][-4000:]}")
        return outputs

    def close(self) -> None:
        """Removes every namespace this cluster made (their links go with them). Idempotent."""
        while self.namespaces:
            ns = self.namespaces.pop()
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
