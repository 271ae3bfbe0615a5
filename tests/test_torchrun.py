"""The same ``swiftfusion generate`` command under torchrun on two machines: two namespaces of the
emulated cluster, each with its torchrun agent and two ranks (a real multi-node rendezvous)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from swiftfusion.emulation import EmulatedCluster


@pytest.mark.timeout(400)
def test_two_node_torchrun_matches_single_process(tmp_path):
    common = ["--prompt", "4", "--num-images", "4", "--steps", "6", "--seed", "3"]
    single = [sys.executable, "-m", "swiftfusion", "generate", *common, "--output", str(tmp_path / "one.png")]
    subprocess.run(single, check=True, capture_output=True, timeout=300)
    cluster = EmulatedCluster(2, 10.0)
    try:
        cluster.torchrun(2, ["-m", "swiftfusion", "generate", *common, "--output", str(tmp_path / "multi.png"),
                             "--ulysses-degree", "2", "--ring-degree", "2", "--timeout", "60"], timeout_s=300)
    finally:
        cluster.close()
    one = np.asarray(Image.open(tmp_path / "one.png")).astype(int)
    multi = np.asarray(Image.open(tmp_path / "multi.png")).astype(int)
    assert np.abs(one - multi).max() <= 1
