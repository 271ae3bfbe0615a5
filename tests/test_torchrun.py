"""The same ``swiftfusion generate`` command under torchrun: two torchrun agents on this machine
stand for two machines of two ranks each (a real multi-node rendezvous)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from swiftfusion.launch import free_port


@pytest.mark.timeout(400)
def test_two_node_torchrun_matches_single_process(tmp_path):
    common = ["--prompt", "4", "--num-images", "4", "--steps", "6", "--seed", "3"]
    single = [sys.executable, "-m", "swiftfusion", "generate", *common, "--output", str(tmp_path / "one.png")]
    subprocess.run(single, check=True, capture_output=True, timeout=300)
    port = free_port()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
             "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
             "-m", "swiftfusion", "generate", *common, "--output", str(tmp_path / "multi.png"),
             "--ulysses-degree", "2", "--ring-degree", "2", "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for node in range(2)
    ]
    logs = []
    for process in nodes:
        try:
            logs.append(process.communicate(timeout=300)[0])
        finally:
            process.kill()
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(logs)
    one = np.asarray(Image.open(tmp_path / "one.png")).astype(int)
    multi = np.asarray(Image.open(tmp_path / "multi.png")).astype(int)
    assert np.abs(one - multi).max() <= 1
