"""Reductions that make every rank of a ``torch.distributed`` job decide alike.

Under data parallelism each rank evaluates the closure on its own mini-batch, so each sees its own
loss. A line search that decided from local losses would accept different step sizes on different
ranks (the replicas drift apart) or run different numbers of trial evaluations (a deadlock). The
optimizer therefore packs what one decision needs into one small tensor and all-reduces it: loss
entries are summed and divided by the world size (``ReduceOp.AVG`` exists only on NCCL, SUM works on
every backend), and every branch of the search is then taken from the reduced values, on every rank.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor


def _distributed_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Reducer:
    """All-reduces the per-evaluation numbers of the line search (identity on one process).

    Args:
        process_group: the group whose ranks must agree; ``None`` means the default group when
            ``torch.distributed`` is initialised.
        enabled: ``None`` (default) reduces whenever a process group with more than one rank is
            in use; ``False`` never reduces (every rank then decides from its own loss: only for
            experiments); ``True`` requires an initialised process group.
    """

    def __init__(self, process_group: Optional[Any] = None, enabled: Optional[bool] = None):
        if enabled is True and not _distributed_ready():
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group; call "
                "torch.distributed.init_process_group(...) before creating the optimizer."
            )
        self.process_group = process_group
        self.enabled = enabled

    @property
    def world_size(self) -> int:
        """Ranks taking part (1 when reductions are off)."""
        if self.enabled is False or not _distributed_ready():
            return 1
        return torch.distributed.get_world_size(self.process_group)

    @property
    def active(self) -> bool:
        """Whether reductions happen."""
        return self.world_size > 1

    def reduce(self, values: Tensor, num_means: int) -> Tensor:
        """Sum ``values`` over the ranks and divide its first ``num_means`` entries by the world size.

        One collective per call. The first entries are per-rank losses (averaged); the rest are
        counts or partial sums (summed).
        """
        world = self.world_size
        if world == 1:
            return values
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM, group=self.process_group)
        if num_means:
            values[:num_means] /= world
        return values
