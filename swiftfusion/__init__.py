"""swiftfusion: parallel inference for Diffusion Transformers."""

from .config import ParallelConfig
from .pipelines import DigitsPipeline, load_pipeline, parallelize
from .runtime import shutdown
from .topology import Link, Topology

__version__ = "0.1.0"

__all__ = [
    "DigitsPipeline", "Link", "ParallelConfig", "Topology", "load_pipeline", "parallelize", "shutdown", "__version__",
]
