"""GPT-2-style byte-level models of growing size on the Shakespeare bytes, context 128.

The size sweep of the overhead suite (:mod:`alsals_bench.sweep`) and the scale suite
(:mod:`alsals_bench.scale`) share these shapes and this data. A model is the benchmark's
:class:`~alsals_bench.models.ByteGPT` (pre-LN blocks, GELU MLP of width ``4 d``, learned positions,
output head tied to the byte embedding). Its parameter count is

    N(d, L) = 12 L d^2 + 13 L d + 2 d + (256 + context) d

(per block: ``qkv`` and ``proj`` ``4 d^2 + 4 d``, the MLP ``8 d^2 + 5 d``, two LayerNorms ``4 d``;
then the final LayerNorm ``2 d`` and the two embeddings; the head is the byte embedding), so the
width sets the size: at context 128,

===========  =======  ======  =====  ===========
label        d_model  layers  heads  parameters
===========  =======  ======  =====  ===========
gpt-tiny     128      1       4      0.25M (tests and smoke runs only)
gpt-0.2M     64       4       4      0.23M
gpt-1M       128      5       4      1.04M
gpt-5M       256      6       8      4.84M
gpt-20M      512      6       8      19.1M
gpt-50M      640      10      10     49.5M
===========  =======  ======  =====  ===========

The data is the Shakespeare byte stream of the ``shakespeare_gpt`` task (34 training plays; whole
plays held out for validation and test), cut into windows of ``context + 1`` bytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from torch import nn

#: the context (window) of every sized model, in bytes
CONTEXT = 128
VOCAB = 256


@dataclass(frozen=True)
class GPTSize:
    """A model shape: ``label`` (e.g. ``gpt-5M``) and the :class:`ByteGPT` arguments."""

    label: str
    d_model: int
    n_layers: int
    n_heads: int

    @property
    def parameters(self) -> int:
        """The exact parameter count at :data:`CONTEXT` (the formula of the module docstring)."""
        return gpt_parameters(self.d_model, self.n_layers)

    def build(self, dropout: float = 0.1) -> nn.Module:
        """A freshly initialised model (from the global torch RNG; seed it first)."""
        from .models import ByteGPT

        return ByteGPT(vocab_size=VOCAB, block_size=CONTEXT, d_model=self.d_model, n_layers=self.n_layers,
                       n_heads=self.n_heads, dropout=dropout)


def gpt_parameters(d: int, n_layers: int, context: int = CONTEXT, vocab: int = VOCAB) -> int:
    """Parameters of a :class:`ByteGPT` of width ``d`` and ``n_layers`` blocks (tied head)."""
    return 12 * n_layers * d * d + 13 * n_layers * d + 2 * d + (vocab + context) * d


#: every shape by label, smallest first (``gpt-tiny`` is for tests and smoke runs)
SIZES: dict[str, GPTSize] = {s.label: s for s in (
    GPTSize("gpt-tiny", 128, 1, 4),
    GPTSize("gpt-0.2M", 64, 4, 4),
    GPTSize("gpt-1M", 128, 5, 4),
    GPTSize("gpt-5M", 256, 6, 8),
    GPTSize("gpt-20M", 512, 6, 8),
    GPTSize("gpt-50M", 640, 10, 10),
)}


def get_size(label: str) -> GPTSize:
    try:
        return SIZES[label]
    except KeyError:
        raise KeyError(f"unknown model size {label!r}; known: {', '.join(SIZES)}") from None


# --------------------------------------------------------------------------------------------------
# the size sweep's settings (the choice is explained in :mod:`alsals_bench.sweep`)


@dataclass(frozen=True)
class SweepSize:
    """The timing settings of one size of the size sweep (see :mod:`alsals_bench.sweep`)."""

    label: str
    batch_size: int
    warmup: int
    repeats: int
    block_steps: int


#: every size the sweep knows; ``gpt-tiny`` is for tests and smoke runs, ``gpt-50M`` on request
SWEEP: dict[str, SweepSize] = {s.label: s for s in (
    SweepSize("gpt-tiny", 2, 2, 2, 2),
    SweepSize("gpt-0.2M", 8, 40, 7, 40),
    SweepSize("gpt-1M", 8, 40, 5, 40),
    SweepSize("gpt-5M", 4, 40, 5, 20),
    SweepSize("gpt-20M", 2, 40, 3, 20),
    SweepSize("gpt-50M", 1, 40, 3, 20),
)}
DEFAULT_SIZES = ("gpt-0.2M", "gpt-1M", "gpt-5M", "gpt-20M")


@functools.lru_cache(maxsize=1)
def shakespeare_windows():
    """The Shakespeare byte streams with windows of :data:`CONTEXT` (a ``_ByteLMData``)."""
    from . import data
    from .tasks import _ByteLMData

    return _ByteLMData(data.load_shakespeare(), CONTEXT)
