"""Reductions that make every rank of a ``torch.distributed`` job decide alike.

Under data parallelism each rank evaluates the closure on its own mini-batch, so each sees its own
loss. A line search that decided from local losses would accept different step sizes on different
ranks (the replicas drift apart) or run different numbers of trial evaluations (a deadlock). The
optimizer therefore packs what one decision needs into one small tensor and all-reduces it: loss
entries are summed and divided by the world size (``ReduceOp.AVG`` exists only on NCCL, SUM works on
every backend), and every branch of the search is then taken from the reduced values, on every rank.

Parameters come in two layouts (``docs/distributed.md`` has the support matrix):

- replicated: plain tensors, the same on every rank (DDP). The slope ``gᵀd`` is then the same on every
  rank; it is averaged with the losses.
- sharded: ``DTensor`` parameters (FSDP2, ``torch.distributed.fsdp.fully_shard``). Each rank computes
  the slope on its local shards only (``to_local()``: no hidden collective per parameter, no full
  tensor materialised); the partial sums are summed in the same collective as the first trial loss.
  An element held by ``R`` ranks (``Replicate`` mesh dimensions, as in HSDP) is weighted ``1/R``.

:func:`check_consistency` is an opt-in debug guard that gathers what every rank decided and raises
when they differ.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Dict, Iterable, List, Optional, cast

import torch
from torch import Tensor


def _distributed_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _dtensor_class() -> Optional[type]:
    # Importing torch.distributed.tensor takes seconds; a DTensor can only exist once it is imported.
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        module = sys.modules.get(name)
        cls = getattr(module, "DTensor", None) if module is not None else None
        if cls is not None:
            return cls
    return None


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (an FSDP2 parameter, say)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(tensor, cls)


def local_tensor(tensor: Optional[Tensor]) -> Optional[Tensor]:
    """The local shard of a ``DTensor`` (no communication), any other tensor (or ``None``) unchanged.

    Called under ``torch.no_grad()`` this is the very tensor that holds the shard, so in-place updates
    of it update the ``DTensor``.
    """
    if is_dtensor(tensor):
        return cast(Any, tensor).to_local()
    return tensor


def _is_fsdp1_param(param: Tensor) -> bool:
    # FSDP1 (FullyShardedDataParallel) marks its FlatParameter and, with use_orig_params=True, the
    # original parameters (views into the local flat shard) with this attribute.
    return bool(getattr(param, "_fsdp_flattened", False) or getattr(param, "_is_flat_param", False))


FSDP1_UNSUPPORTED_MESSAGE = (
    "{name} does not support FSDP1 (torch.distributed.fsdp.FullyShardedDataParallel) parameters. "
    "Their flat local shards do not say how they are sharded (FULL_SHARD, NO_SHARD and HYBRID_SHARD "
    "would each need another reduction of the slope), and FSDP1 keeps the root module's full "
    "parameters after a forward pass without backward, so trial evaluations would see stale weights. "
    "Use FSDP2 instead (torch.distributed.fsdp.fully_shard), which {name} supports, or DDP."
)


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
        if process_group is not None and not _distributed_ready():
            raise ValueError(
                "process_group was given but torch.distributed is not initialised; call "
                "torch.distributed.init_process_group(...) before creating the optimizer."
            )
        self.process_group = process_group
        self.enabled = enabled

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Reducer":
        # A process group is a handle of this process: a deep copy of an optimizer reduces over the
        # same group.
        copy = Reducer.__new__(Reducer)
        copy.process_group, copy.enabled = self.process_group, self.enabled
        return copy

    def __getstate__(self) -> Dict[str, Any]:
        # A process group cannot be pickled: an unpickled optimizer reduces over the default group.
        if self.process_group is not None:
            warnings.warn(
                "Pickling an alsals optimizer drops its process_group (a process group cannot be pickled): "
                "the unpickled optimizer reduces over the default process group.",
                RuntimeWarning,
                stacklevel=2,
            )
        return {"process_group": None, "enabled": self.enabled}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.process_group = state.get("process_group")
        self.enabled = state.get("enabled")

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

    def group_ranks(self) -> List[int]:
        """The global ranks of the group (``[0]`` when ``torch.distributed`` is not initialised)."""
        if not _distributed_ready():
            return [0]
        group = self.process_group if self.process_group is not None else torch.distributed.group.WORLD
        return list(torch.distributed.get_process_group_ranks(group))

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

    # ------------------------------------------------------------------------------------------
    # Parameter layouts
    # ------------------------------------------------------------------------------------------

    def slope_weight(self, param: Tensor, optimizer_name: str = "ALSALS") -> Optional[float]:
        """How the local partial slope of ``param`` enters the summed slope.

        ``None`` for a plain tensor (a replica, as under DDP). For a ``DTensor``: ``1/R``, where ``R``
        is the number of ranks holding each local element (the product of the sizes of its
        ``Replicate`` mesh dimensions; 1 for FSDP2's ``Shard(0)``), so that the sum over the ranks of
        ``weight · (local gᵀd)`` is the slope of the whole parameter.

        Raises:
            ValueError: for layouts whose partial sums this reduction cannot combine (FSDP1 flat
                parameters, ``Partial`` placements, a device mesh that is not the optimizer's process
                group, or sharded parameters with ``distributed=False``).
        """
        if _is_fsdp1_param(param):
            raise ValueError(FSDP1_UNSUPPORTED_MESSAGE.format(name=optimizer_name))
        if not is_dtensor(param):
            return None
        if self.enabled is False:
            raise ValueError(
                f"{optimizer_name}(distributed=False) cannot be used with sharded (DTensor) parameters: "
                "the slope is a sum of per-shard partial sums and must be reduced across the ranks. "
                "Leave distributed at its default (None)."
            )
        dtensor: Any = param
        mesh = dtensor.device_mesh
        replication = 1
        for dim, placement in enumerate(dtensor.placements):
            if placement.is_replicate():
                replication *= mesh.size(dim)
            elif not (placement.is_shard() or type(placement).__name__ == "_StridedShard"):
                raise ValueError(
                    f"{optimizer_name} supports DTensor parameters with Shard and Replicate placements "
                    f"(FSDP2, HSDP); got a parameter of shape {tuple(param.shape)} with placements "
                    f"{tuple(dtensor.placements)}. Redistribute it (e.g. to Shard(0)) first."
                )
        mesh_ranks = sorted(int(r) for r in mesh.mesh.flatten().tolist())
        group_ranks = sorted(self.group_ranks())
        if mesh_ranks != group_ranks:
            raise ValueError(
                f"{optimizer_name}: a DTensor parameter of shape {tuple(param.shape)} lives on a device "
                f"mesh of ranks {mesh_ranks}, but the optimizer reduces over the process group of ranks "
                f"{group_ranks}. The slope of sharded parameters is summed over the optimizer's group, "
                "so both must hold the same ranks: pass process_group= the group of the parameters' "
                "mesh (e.g. mesh.get_group() for a 1-D mesh)."
            )
        return 1.0 / replication


def parameter_checksum(params: Iterable[Tensor]) -> Tensor:
    """A 0-dim float64 sum of the local values of ``params`` (bitwise equal for equal parameters)."""
    total = torch.zeros((), dtype=torch.float64)
    for p in params:
        shard = cast(Tensor, local_tensor(p))
        total += shard.detach().double().sum().cpu()
    return total


#: what :func:`check_consistency` compares, in this order
CONSISTENCY_FIELDS = ("step_size", "last_trials", "forward_evaluations", "smoothed_slope", "smoothed_decrease", "steps")


def check_consistency(optimizer: Any, process_group: Optional[Any] = None, parameters: Optional[bool] = None) -> None:
    """Raise when the ranks of a ``torch.distributed`` job disagree about the last step (debug guard).

    Gathers from every rank the accepted step size, the number of trials of the last step, the
    forward-evaluation counter, the smoothed slope and decrease, and (for replicated parameters) a
    checksum of the parameters, and raises :class:`RuntimeError` naming the ranks and their values
    when they differ. One ``all_gather`` and one host synchronisation: meant for debugging, enabled per
    step by ``ALSALS(..., check_consistency=True)`` or called by hand after ``step``. Does nothing on
    one process.

    Args:
        optimizer: an :class:`~alsals.ALSALS` (or preset).
        process_group: the group to check (default: the optimizer's).
        parameters: include the parameter checksum (default: when no parameter is sharded; sharded
            parameters differ per rank by design).
    """
    if not _distributed_ready():
        return
    reducer: Reducer = optimizer.reducer
    group = process_group if process_group is not None else reducer.process_group
    world = torch.distributed.get_world_size(group)
    if world == 1:
        return
    state = optimizer.search_state
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if parameters is None:
        parameters = not any(is_dtensor(p) for p in params)
    values = [float(state[k]) for k in CONSISTENCY_FIELDS]
    fields = list(CONSISTENCY_FIELDS)
    if parameters:
        values.append(float(parameter_checksum(params)))
        fields.append("parameter_checksum")
    device = _collective_device(group)
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(gathered, mine, group=group)
    table = [t.tolist() for t in gathered]
    ranks = torch.distributed.get_process_group_ranks(group) if group is not None else list(range(world))
    differing = []
    for i, name in enumerate(fields):
        column = [row[i] for row in table]
        if any(not _same(column[0], v) for v in column[1:]):
            per_rank = ", ".join(f"rank {r} = {v!r}" for r, v in zip(ranks, column))
            differing.append(f"  {name}: {per_rank}")
    if differing:
        raise RuntimeError(
            f"{type(optimizer).__name__}: the ranks disagree after step {int(state['steps'])}:\n"
            + "\n".join(differing)
            + "\nEvery rank must take the same step. Causes: distributed=False (each rank decides from "
            "its own loss), a closure whose trial evaluations differ in number or batch between the "
            "ranks, optimizers created or restored from different states, or a process group that is "
            "not the one the model synchronises over."
        )


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _collective_device(group: Optional[Any]) -> torch.device:
    """CPU for gloo, the current CUDA device for NCCL."""
    backend = torch.distributed.get_backend(group)
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
