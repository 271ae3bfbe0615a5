import re

import pytest

from swiftfusion import Link, ParallelConfig, Topology


def test_defaults_are_one_process():
    config = ParallelConfig()
    assert config.product == 1 and config.sp_degree == 1


def test_product_must_equal_world_size():
    message = (
        "the parallel degrees multiply to 8 (data 1 × cfg 2 × pipefusion 1 × ulysses 2 × ring 2) "
        "but the world size is 4; choose degrees whose product is 4"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        ParallelConfig(cfg_degree=2, ulysses_degree=2, ring_degree=2, world_size=4)
    ParallelConfig(cfg_degree=2, ulysses_degree=2, world_size=4)  # fits


@pytest.mark.parametrize("name", ["data_degree", "cfg_degree", "ulysses_degree", "ring_degree", "pipefusion_degree"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_degrees_must_be_positive_integers(name, value):
    message = f"{name} must be a positive integer (1, 2, 3, ...), got {value!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        ParallelConfig(**{name: value})


def test_cfg_degree_is_one_or_two():
    message = "cfg_degree must be one of (1, 2) (conditional and unconditional branch), got 3"
    with pytest.raises(ValueError, match=re.escape(message)):
        ParallelConfig(cfg_degree=3)


def test_pipefusion_not_yet():
    message = "pipefusion_degree=2 is not supported yet (PipeFusion is not built); allowed: 1"
    with pytest.raises(ValueError, match=re.escape(message)):
        ParallelConfig(pipefusion_degree=2)


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match=re.escape("collective_timeout_s must be a positive number of seconds, got 0")):
        ParallelConfig(collective_timeout_s=0)


def test_topology_nodes_and_links():
    topo = Topology(world_size=8, ranks_per_node=4)
    assert topo.num_nodes == 2
    assert topo.link_class(1, 3) == "intra" and topo.link_class(3, 4) == "inter"
    with pytest.raises(ValueError, match=re.escape("ranks_per_node=3 must be a positive divisor of the world size 8")):
        Topology(world_size=8, ranks_per_node=3)


def test_topology_detects_torchrun_local_world_size(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert Topology.detect(8).ranks_per_node == 2
    assert Topology.detect(8, ranks_per_node=4).ranks_per_node == 4


def test_links_are_declared_or_detected(monkeypatch):
    assert Link.parse("400,5") == Link(400.0, 5.0) and Link.parse("0.1") == Link(0.1, 0.0)
    with pytest.raises(ValueError, match=re.escape("link gbit_per_s must be a number > 0, got 0")):
        Link(0)
    with pytest.raises(ValueError, match=re.escape("inter_node_link must be a swiftfusion.Link or None, got '1'")):
        ParallelConfig(inter_node_link="1")
    # Defaults: a GPU node (NVLink inside, 400 Gbit/s between nodes).
    assert Topology.detect(8, 4).inter == Link(400.0, 10.0) and Topology.detect(8, 4).intra == Link(3600.0, 3.0)
    monkeypatch.setenv("SWIFTFUSION_INTER_NODE_LINK", "0.1")  # what the emulated cluster sets
    assert Topology.detect(8, 4).inter == Link(0.1, 0.0)
    assert Topology.detect(8, 4, inter=Link(25, 2)).inter == Link(25, 2)  # declared wins
    assert Link(8, 100).seconds(1e9, 10) == pytest.approx(1.0 + 1e-3)
