"""``ParallelConfig``: every parallel degree and option in one validated value.

Validated once, at construction; each error names the bad value and what is allowed. This module
never touches torch.distributed: the world size is checked by ``check_world_size`` when a mesh is
built (or here, if the caller passes ``world_size``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .topology import Link

DEGREE_NAMES = ("data_degree", "cfg_degree", "pipefusion_degree", "ulysses_degree", "ring_degree")
CFG_DEGREES = (1, 2)
SP_LAYOUTS = ("usp", "tas", "auto")
ALL_TO_ALL = ("flat", "tapa")
SP_ALGORITHMS = ("usp", "torus")
TRANSPORTS = ("collective", "one_sided")


@dataclass(frozen=True)
class ParallelConfig:
    """How the work of one generation is split across processes.

    Ranks are laid out as ``data × cfg × pipefusion × (sequence parallel)``; inside the sequence
    parallel block ``sp_layout`` decides whether Ulysses or Ring groups are the consecutive ranks.

    - ``data_degree``: prompts / images split across groups of ranks.
    - ``cfg_degree``: 1, or 2 to run the conditional and unconditional branch on different ranks.
    - ``pipefusion_degree``: reserved for PipeFusion; only 1 is accepted today.
    - ``ulysses_degree`` × ``ring_degree``: sequence parallelism (USP when both exceed 1).
    - ``sp_layout``: where the Ulysses and Ring groups sit. ``"usp"`` (xDiT's placement): Ulysses
      groups are consecutive ranks (inside a node), Ring groups stride across nodes. ``"tas"``
      (topology-aware, reversed): Ring groups are consecutive ranks, Ulysses groups stride across
      nodes. ``"auto"``: whichever moves fewer bytes over the inter-node links for the model.
    - ``all_to_all``: ``"flat"`` (one collective) or ``"tapa"`` (CoCoDiff's topology-aligned
      phases: inside nodes, then between nodes; exact, fewer and larger inter-node messages) for
      Ulysses groups that span nodes.
    - ``sp_algorithm``: ``"usp"`` (Ulysses all-to-all, then Ring) or ``"torus"`` (StreamFusion's
      Torus attention over the Ulysses group: Pull-Q / Pull-KV / Push-O transfers overlapped with
      tile compute; needs ``ring_degree == 1``).
    - ``transport``: ``"collective"`` (torch.distributed) or ``"one_sided"``: groups inside one
      node put their data straight into each other's shared-memory buffers and signal with flags
      (CPU; the CUDA symmetric-memory path is not written yet); traffic between nodes stays
      collective.
    - ``v_first``: start V's all-to-all before Q and K are projected, normalised and rotated
      (CoCoDiff's V-First; exact).
    - ``intra_node_link`` / ``inter_node_link``: bandwidth and latency of the links inside and
      between nodes (``Link``), for the planner's ``sp_layout="auto"``; default: from the
      launcher's environment, else ``topology.DEFAULT_LINKS`` (NVLink inside, 400 Gbit/s across).
    - ``world_size``: optional; when given, the product of the degrees must equal it.
    - ``collective_timeout_s``: every collective fails after this many seconds instead of hanging.
    """

    data_degree: int = 1
    cfg_degree: int = 1
    pipefusion_degree: int = 1
    ulysses_degree: int = 1
    ring_degree: int = 1
    sp_layout: str = "usp"
    all_to_all: str = "flat"
    sp_algorithm: str = "usp"
    transport: str = "collective"
    v_first: bool = False
    intra_node_link: Link | None = None
    inter_node_link: Link | None = None
    world_size: int | None = None
    collective_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name in DEGREE_NAMES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer (1, 2, 3, ...), got {value!r}")
        if self.cfg_degree not in CFG_DEGREES:
            raise ValueError(
                f"cfg_degree must be one of {CFG_DEGREES} (conditional and unconditional branch), "
                f"got {self.cfg_degree}"
            )
        if self.pipefusion_degree != 1:
            raise ValueError(
                f"pipefusion_degree={self.pipefusion_degree} is not supported yet (PipeFusion is not built); allowed: 1"
            )
        if self.sp_layout not in SP_LAYOUTS:
            raise ValueError(f"sp_layout must be one of {', '.join(SP_LAYOUTS)}, got {self.sp_layout!r}")
        if self.all_to_all not in ALL_TO_ALL:
            raise ValueError(f"all_to_all must be one of {', '.join(ALL_TO_ALL)}, got {self.all_to_all!r}")
        if self.sp_algorithm not in SP_ALGORITHMS:
            raise ValueError(f"sp_algorithm must be one of {', '.join(SP_ALGORITHMS)}, got {self.sp_algorithm!r}")
        if self.sp_algorithm == "torus" and self.ring_degree != 1:
            raise ValueError(
                f"sp_algorithm='torus' runs over the Ulysses group; ring_degree must be 1, got {self.ring_degree}"
            )
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        if not isinstance(self.v_first, bool):
            raise ValueError(f"v_first must be True or False, got {self.v_first!r}")
        for name in ("intra_node_link", "inter_node_link"):
            if not isinstance(getattr(self, name), (Link, type(None))):
                raise ValueError(f"{name} must be a swiftfusion.Link or None, got {getattr(self, name)!r}")
        timeout = self.collective_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"collective_timeout_s must be a positive number of seconds, got {timeout!r}")
        if self.world_size is not None:
            self.check_world_size(self.world_size)

    @property
    def sp_degree(self) -> int:
        """Sequence-parallel degree: Ulysses × Ring."""
        return self.ulysses_degree * self.ring_degree

    @property
    def product(self) -> int:
        return self.data_degree * self.cfg_degree * self.pipefusion_degree * self.sp_degree

    def check_world_size(self, world_size: int) -> None:
        if self.product != world_size:
            terms = " × ".join(f"{n.removesuffix('_degree')} {getattr(self, n)}" for n in DEGREE_NAMES)
            raise ValueError(
                f"the parallel degrees multiply to {self.product} ({terms}) but the world size is "
                f"{world_size}; choose degrees whose product is {world_size}"
            )

    def describe(self) -> str:
        return ", ".join(
            f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name in DEGREE_NAMES
        )
