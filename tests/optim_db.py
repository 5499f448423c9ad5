"""The one database of optimizer variants that drives the generic checks (as torch's ``optim_db``).

Every preset and option that changes what a step does is one entry; ``tests/test_generic.py`` runs
each check on every entry, and ``tests/test_torch_conformance.py`` turns the entries into torch's
``OptimizerInput``\\ s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict

import alsals


@dataclass(frozen=True)
class Variant:
    """One configuration of the engine.

    Attributes:
        name: the test id.
        kwargs: the keywords of ``cls``.
        cls: ``alsals.ALSALS`` or a preset class.
        amortized: whether its runs take amortized steps after the warm-up searches.
        device_amortized: whether those amortized steps are decided on the device (torch's fused
            AdamW kernel, no host read); the others read the first loss back like a search does.
    """

    name: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    cls: Callable[..., alsals.ALSALS] = alsals.ALSALS
    amortized: bool = True
    device_amortized: bool = True

    def make(self, params: Any, **overrides: Any) -> alsals.ALSALS:
        return self.cls(params, **{**self.kwargs, **overrides})

    @property
    def alsals_kwargs(self) -> Dict[str, Any]:
        """The same configuration as keywords of ``alsals.ALSALS`` itself."""
        if self.cls is alsals.SLS:
            n = self.kwargs.get("n_batches_per_epoch", 500)
            rest = {k: v for k, v in self.kwargs.items() if k != "n_batches_per_epoch"}
            return {"preset": "sls", "growth": 2 ** (1 / n), **rest}
        if self.cls is alsals.SaLSa:
            return {"preset": "salsa", **self.kwargs}
        return dict(self.kwargs)


VARIANTS = [
    Variant("default"),
    Variant("paper", {"preset": "paper"}, amortized=False, device_amortized=False),
    Variant("v0.1", {"preset": "v0.1"}),
    Variant("sls", {"n_batches_per_epoch": 8}, cls=alsals.SLS, amortized=False, device_amortized=False),
    Variant("salsa", {}, cls=alsals.SaLSa, device_amortized=False),  # its direction P·g: multi-tensor kernels
    Variant("no-amortization", {"amortized": False}, amortized=False, device_amortized=False),
    Variant("doubling-interval", {"search_interval_rule": "doubling"}),
    Variant("finite-difference", {"slope": "finite_difference"}),
    Variant("trial-previous", {"trial_direction": "previous"}),
    Variant("reference-kernels", {"foreach": False}, device_amortized=False),
    Variant("foreach-kernels", {"foreach": True}),
    Variant("unfused", {"fused": False}, device_amortized=False),
    Variant("anneal", {"total_steps": 40, "anneal": "cosine"}),
    Variant("decay-and-lr", {"weight_decay": 0.1, "lr": 0.5}),
]

VARIANT_IDS = [v.name for v in VARIANTS]
