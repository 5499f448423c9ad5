"""alsals: learning-rate-free training for PyTorch.

``alsals.ALSALS`` is Adam whose step size is chosen at every step by a stochastic Armijo line search
along Adam's momentum direction (Kenneweg, Kenneweg & Hammer, arXiv 2403.18519). ``alsals.SLS`` and
``alsals.SaLSa`` are its relatives as presets of the same engine.
"""

from .accumulation import micro_batch_closure
from .optimizer import ALSALS
from .presets import SLS, SaLSa
from .search import SearchConfig, SearchStatus

__version__ = "0.1.0"

__all__ = ["ALSALS", "SLS", "SaLSa", "SearchConfig", "SearchStatus", "micro_batch_closure", "__version__"]
