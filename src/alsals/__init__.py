"""alsals: learning-rate-free training for PyTorch.

``alsals.ALSALS`` is Adam whose step size is chosen at every step by a stochastic Armijo line search
along Adam's momentum direction (Kenneweg, Kenneweg & Hammer, arXiv 2403.18519). ``alsals.SLS`` and
``alsals.SaLSa`` are its relatives as presets of the same engine.
"""

from ._version import __version__
from .accumulation import micro_batch_closure
from .config import PRESETS, ALSALSConfig
from .layerwise import LayerwiseALSALS
from .optimizer import ALSALS
from .presets import SLS, SaLSa
from .search import SearchConfig, SearchState, SearchStatus

__all__ = [
    "ALSALS",
    "ALSALSConfig",
    "LayerwiseALSALS",
    "PRESETS",
    "SLS",
    "SaLSa",
    "SearchConfig",
    "SearchState",
    "SearchStatus",
    "micro_batch_closure",
    "__version__",
]
