"""Integrations with the frameworks people train with (optional extras, imported lazily).

Nothing here is imported by ``import alsals`` and this package itself imports no framework: import the
submodule you need, and it imports its framework (or says which extra to install)::

    from alsals.integrations.lightning import StepSizeLogger      # pip install 'alsals[lightning]'
    from alsals.integrations.transformers import ALSALSTrainer    # pip install 'alsals[transformers]'

See ``docs/integrations.md`` for the recipes (mixed precision, Lightning automatic and manual
optimisation, the Hugging Face ``Trainer``, ``accelerate``) and what each costs per step.
"""

from __future__ import annotations

from ..layerwise import LayerwiseALSALS
from ..optimizer import ALSALS

__all__: list = []  # the submodules import their frameworks: never import them from here

#: the optimizers the integrations drive: ALSALS (presets included) and the per-layer LayerwiseALSALS
LINE_SEARCH_OPTIMIZERS = (ALSALS, LayerwiseALSALS)


def _missing_extra(module: str, extra: str, error: ImportError) -> ImportError:
    """The ``ImportError`` an integration raises when its framework is not installed."""
    return ImportError(
        f"alsals.integrations.{module} needs the optional dependency {error.name or module!r}, which is not "
        f"installed. Install it with:  pip install 'alsals[{extra}]'"
    )
