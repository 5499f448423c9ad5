"""The properties torch's ``test/test_optim.py`` checks for every optimizer, checked for ALSALS.

ALSALS is declared as an ``OptimizerInfo`` with torch's own machinery
(``torch.testing._internal.common_optimizers``), with ``step_requires_closure=True`` as torch
declares LBFGS. The tests are ours, written for a line search: every step takes a closure, and the
closures follow torch's tests (they call ``zero_grad()`` and ``backward()``, or set ``p.grad``
themselves). What does not apply to a line search, and why, is listed in ``docs/algorithm.md``
("torch's optimizer checks").
"""

import copy
import functools
import io
from pathlib import Path

import pytest
import torch
from torch.nn import Parameter
from torch.optim.lr_scheduler import LinearLR, ReduceLROnPlateau, StepLR
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import alsals

from optim_db import VARIANTS

common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")
ErrorOptimizerInput = common_optimizers.ErrorOptimizerInput
OptimizerErrorEnum = common_optimizers.OptimizerErrorEnum
OptimizerInfo = common_optimizers.OptimizerInfo
OptimizerInput = common_optimizers.OptimizerInput

FIXTURE = Path(__file__).parent / "fixtures" / "alsals-0.1.0-state.pt"


def optim_inputs_func_alsals(device, dtype=None):
    """Every variant of the database, as keywords of ``alsals.ALSALS`` (no global-cliquey flags)."""
    inputs = []
    for variant in VARIANTS:
        kwargs = {k: v for k, v in variant.alsals_kwargs.items() if k not in ("foreach", "fused")}
        if variant.name in ("foreach-kernels", "unfused"):
            continue  # the same configuration as "default" without its kernel flag
        inputs.append(OptimizerInput(params=None, kwargs=kwargs, desc=variant.name))
    inputs.append(OptimizerInput(params=None, kwargs={"lr": torch.tensor(0.5)}, desc="Tensor lr"))
    return inputs


def optim_error_inputs_func_alsals(device, dtype):
    sample = Parameter(torch.randn(2, 2, device=device, dtype=dtype))
    errors = list(common_optimizers.get_error_inputs_for_all_optims(device, dtype))
    for kwargs, regex in (
        ({"c": 5.0}, "c must lie in"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\] must lie in"),
        ({"initial_step_size": 100.0}, "initial_step_size must lie in"),
        ({"preset": "adamw"}, "preset must be one of"),
        ({"max_backtracks": 2.5}, "max_backtracks must be an int"),
        ({"direction": "newton"}, "direction must be one of"),
    ):
        errors.append(
            ErrorOptimizerInput(
                OptimizerInput(params=[sample], kwargs=kwargs, desc=regex), error_type=ValueError, error_regex=regex
            )
        )
    errors.append(
        ErrorOptimizerInput(
            OptimizerInput(params=[sample], kwargs={}, desc="step needs a closure"),
            error_on=OptimizerErrorEnum.STEP_ERROR,
            error_type=TypeError,
            error_regex=r"needs a closure",
        )
    )
    return errors


ALSALS_INFO = OptimizerInfo(
    alsals.ALSALS,
    optim_inputs_func=optim_inputs_func_alsals,
    optim_error_inputs_func=optim_error_inputs_func_alsals,
    scheduler_inputs=(
        [lambda opt: StepLR(opt, gamma=0.9, step_size=10)],
        [lambda opt: LinearLR(opt, start_factor=0.4, end_factor=0.9, total_iters=20)],
        [lambda opt: StepLR(opt, gamma=0.99, step_size=10), lambda opt: ReduceLROnPlateau(opt)],
    ),
    supported_impls=("foreach", "fused"),
    not_og_supported_flags=(),
    supports_complex=False,
    step_requires_closure=True,
    supports_multiple_devices=False,
)

INPUTS = ALSALS_INFO.optim_inputs_func(device="cpu")
inputs = pytest.mark.parametrize("optim_input", INPUTS, ids=[i.desc for i in INPUTS])


def make(optim_input, params, **overrides):
    return ALSALS_INFO.optim_cls(params, **{**copy.deepcopy(optim_input.kwargs), **overrides})


def weight_bias(contiguous=True):
    if contiguous:
        return Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
    return Parameter(torch.randn(10, 5, 2)[..., 0]), Parameter(torch.randn(10, 2)[..., 0])


def fwd_bwd(optimizer, weight, bias, x):
    optimizer.zero_grad()
    loss = (weight.mv(x) + bias).pow(2).sum()
    loss.backward()
    return loss


def test_the_optimizer_info_declares_no_global_cliquey_flags():
    for optim_input in INPUTS:
        assert not {"foreach", "fused", "differentiable"} & set(optim_input.kwargs)


@pytest.mark.parametrize("error_input", ALSALS_INFO.optim_error_inputs_func(device="cpu", dtype=torch.float32),
                         ids=lambda e: e.optimizer_error_input.desc)
def test_errors(error_input):
    optim_input = error_input.optimizer_error_input
    params, kwargs = optim_input.params, optim_input.kwargs
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        if issubclass(error_input.error_type, Warning):
            with pytest.warns(error_input.error_type, match=error_input.error_regex):
                ALSALS_INFO.optim_cls(params, **kwargs)
        else:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                ALSALS_INFO.optim_cls(params, **kwargs)
    else:
        optimizer = ALSALS_INFO.optim_cls(params, **kwargs)
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            optimizer.step()


@inputs
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("schedulers", [0, 1, 2, 3], ids=["no-scheduler", "StepLR", "LinearLR", "ReduceLROnPlateau"])
def test_the_loss_decreases_with_and_without_schedulers(optim_input, contiguous, schedulers):
    torch.manual_seed(0)
    weight, bias = weight_bias(contiguous)
    x = torch.randn(5)
    optimizer = make(optim_input, [weight, bias], foreach=False)
    makers = ALSALS_INFO.scheduler_inputs[schedulers - 1] if schedulers else []
    scheds = [m(optimizer) for m in makers]
    closure = functools.partial(fwd_bwd, optimizer, weight, bias, x)
    initial = closure().item()
    for _ in range(20):
        loss = optimizer.step(closure)
        for sched in scheds:
            sched.step(loss) if isinstance(sched, ReduceLROnPlateau) else sched.step()
    assert closure().item() < initial


@inputs
def test_param_groups_weight_decay_and_lr(optim_input):
    torch.manual_seed(0)
    weight, bias = weight_bias()
    irrelevant = Parameter(torch.randn(2))
    irrelevant_clone = irrelevant.detach().clone()
    x = torch.randn(5)
    kwargs = {k: v for k, v in optim_input.kwargs.items() if k not in ("lr", "weight_decay")}
    optimizer = ALSALS_INFO.optim_cls(
        [
            dict(params=[weight], weight_decay=0.1, lr=1.0),
            dict(params=[bias], weight_decay=0.0, lr=1.0),
            dict(params=[irrelevant]),
        ],
        lr=1e-28,
        **kwargs,
    )

    def closure():
        loss = fwd_bwd(optimizer, weight, bias, x)
        irrelevant.grad = torch.rand_like(irrelevant)
        return loss

    initial = (weight.mv(x) + bias).pow(2).sum().item()
    for _ in range(20):
        optimizer.step(closure)
    assert (weight.mv(x) + bias).pow(2).sum().item() < initial
    assert torch.equal(irrelevant.detach(), irrelevant_clone)  # lr 1e-28: it does not move, trials or not


@inputs
def test_step_is_a_no_op_when_params_have_no_grad(optim_input):
    params = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    old = [p.clone() for p in params]
    optimizer = make(optim_input, params)
    assert optimizer.step(lambda: torch.tensor([1.0])).item() == 1.0
    assert all(torch.equal(p, q) for p, q in zip(params, old))


@inputs
def test_step_is_a_no_op_for_zero_grads(optim_input):
    if optim_input.kwargs.get("weight_decay", 0):
        pytest.skip("decay moves the parameters without gradients, as in torch")
    param = torch.randn(5, 1, requires_grad=True)
    old = param.detach().clone()
    optimizer = make(optim_input, [param])

    def closure():  # torch's test sets the gradients itself; a closure here
        param.grad = torch.zeros_like(param)
        return torch.tensor([1.0])

    optimizer.step(closure)
    assert torch.equal(param.detach(), old)


@inputs
def test_the_optimizer_can_be_printed(optim_input):
    optimizer = make(optim_input, [Parameter(torch.randn(2, 3)) for _ in range(2)])
    assert "ALSALS" in repr(optimizer)


@inputs
def test_state_dict_is_deterministic_and_loads_into_equal_parameters(optim_input):
    torch.manual_seed(0)
    weight, bias = Parameter(torch.randn(2, 3)), Parameter(torch.randn(2))
    x = torch.randn(3)
    optimizer = make(optim_input, [weight, bias])
    closure = functools.partial(fwd_bwd, optimizer, weight, bias, x)
    for _ in range(12):
        optimizer.step(closure)
    with torch.no_grad():
        weight_c, bias_c = Parameter(weight.clone()), Parameter(bias.clone())
    optimizer_c = make(optim_input, [weight_c, bias_c])
    closure_c = functools.partial(fwd_bwd, optimizer_c, weight_c, bias_c, x)
    optimizer_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for _ in range(10):
        optimizer.step(closure)
        optimizer_c.step(closure_c)
        assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)
    assert optimizer.state_dict()["param_groups"] == optimizer_c.state_dict()["param_groups"]
    for a, b in zip(optimizer.state_dict()["state"].values(), optimizer_c.state_dict()["state"].values()):
        assert a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    # repeated parameters have the same representation
    optimizer_c.param_groups.extend(optimizer_c.param_groups)
    assert optimizer.state_dict()["param_groups"][-1] == optimizer_c.state_dict()["param_groups"][-1]


@inputs
def test_save_load_with_weights_only_is_equal(optim_input):
    torch.manual_seed(0)
    weight, bias = weight_bias()
    x = torch.randn(5)
    optimizer = make(optim_input, [weight, bias])
    closure = functools.partial(fwd_bwd, optimizer, weight, bias, x)
    for _ in range(3):
        optimizer.step(closure)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["param_groups"] == optimizer.state_dict()["param_groups"]
    fresh = make(optim_input, [weight, bias])
    fresh.load_state_dict(loaded)
    assert fresh.search_state == optimizer.search_state


@inputs
def test_named_parameters_and_older_state_dicts_load(optim_input):
    torch.manual_seed(0)
    weight, bias = weight_bias()
    x = torch.randn(5)
    optimizer = make(optim_input, [("weight", weight), ("bias", bias)])
    closure = functools.partial(fwd_bwd, optimizer, weight, bias, x)
    for _ in range(3):
        optimizer.step(closure)
    saved = optimizer.state_dict()
    assert saved["param_groups"][0]["param_names"] == ["weight", "bias"]
    # an older state dict: tensor step counts (as torch's Adam writes), no search state
    older = copy.deepcopy(saved)
    for state in older["state"].values():
        state["step"] = torch.tensor(float(state["step"]))
    for group in older["param_groups"]:
        del group["search"], group["step_size"], group["param_names"]
    fresh = make(optim_input, [weight, bias])
    fresh.load_state_dict(older)
    fresh.step(functools.partial(fwd_bwd, fresh, weight, bias, x))
    assert fresh.counters["steps"] == 1  # the search state starts afresh


@pytest.mark.parametrize("fused", [False, None], ids=["multi-tensor kernels", "fused amortized steps"])
def test_a_state_dict_written_by_version_0_1_0_loads_and_continues(fused):
    """With 0.1.0's kernels (``fused=False``) the run continues bitwise; with torch's fused AdamW
    kernel for the amortized steps (the default) the step sizes are the same and the weights agree to
    rounding (the fused kernel rounds differently)."""
    saved = torch.load(FIXTURE, weights_only=True)
    assert saved["version"] == "0.1.0"
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model.load_state_dict(saved["model"])
    opt = alsals.ALSALS([{"params": model[0].parameters()}, {"params": model[2].parameters()}], fused=fused)
    opt.load_state_dict(saved["optimizer"])
    assert opt.counters["steps"] == 12 and opt.param_groups[1]["lr"] == 0.5
    X, y = saved["X"], saved["y"]
    step_sizes, statuses = [], []
    for idx in saved["order"][12:]:
        opt.step(lambda: ((model(X[idx]) - y[idx]) ** 2).mean())
        step_sizes.append(opt.step_size)
        statuses.append(opt.search_state["last_status"])
    assert statuses == [s.replace("amortised", "amortized") for s in saved["then_statuses"]]
    assert step_sizes == saved["then_step_sizes"]
    for p, q in zip(model.parameters(), saved["then_params"]):
        if fused is False:
            assert torch.equal(p.detach(), q)
        else:
            torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-7)


@inputs
def test_deepcopy_copies_all_public_attributes(optim_input):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    optimizer = make(optim_input, params)

    def closure():
        for p in params:
            p.grad = torch.rand_like(p)
        return torch.tensor(1.0)

    for _ in range(3):
        optimizer.step(closure)
    copied = copy.deepcopy(optimizer)
    assert {k for k in vars(optimizer) if not k.startswith("_")} == {k for k in vars(copied) if not k.startswith("_")}
    assert copied.config == optimizer.config and copied.search_state == optimizer.search_state


def test_step_hooks_run_around_every_step():
    weight, bias = weight_bias()
    x = torch.randn(5)
    optimizer = alsals.ALSALS([weight, bias])
    order = []
    handles = [
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: order.append("pre")),
        optimizer.register_step_post_hook(lambda opt, args, kwargs: order.append("post")),
        register_optimizer_step_pre_hook(lambda opt, args, kwargs: order.append("global pre")),
        register_optimizer_step_post_hook(lambda opt, args, kwargs: order.append("global post")),
    ]
    try:
        optimizer.step(functools.partial(fwd_bwd, optimizer, weight, bias, x))
    finally:
        for handle in handles:
            handle.remove()
    assert order == ["global pre", "pre", "post", "global post"]
    optimizer.step(functools.partial(fwd_bwd, optimizer, weight, bias, x))
    assert len(order) == 4


def test_state_dict_and_load_state_dict_hooks():
    weight, bias = weight_bias()
    x = torch.randn(5)
    optimizer = alsals.ALSALS([weight, bias])
    optimizer.step(functools.partial(fwd_bwd, optimizer, weight, bias, x))
    seen = []

    def pre(opt):
        seen.append("state_dict pre")

    def post(opt, state_dict):
        state_dict["extra"] = 1
        return state_dict

    optimizer.register_state_dict_pre_hook(pre)
    optimizer.register_state_dict_post_hook(post)
    saved = optimizer.state_dict()
    assert seen == ["state_dict pre"] and saved["extra"] == 1 and "search" in saved["param_groups"][0]

    fresh = alsals.ALSALS([weight, bias])

    def load_pre(opt, state_dict):
        state_dict = copy.deepcopy(state_dict)
        state_dict.pop("extra")
        state_dict["param_groups"][0]["search"]["step_size"] = 0.25  # a pre hook may edit the search state
        return state_dict

    def load_post(opt):
        seen.append(("load post", opt.step_size))

    fresh.register_load_state_dict_pre_hook(load_pre)
    fresh.register_load_state_dict_post_hook(load_post)
    fresh.load_state_dict(saved)
    assert fresh.step_size == 0.25 and seen[-1] == ("load post", 0.25)


@inputs
def test_fused_and_foreach_match_the_for_loop_with_a_zero_size_parameter_and_a_step_without_gradients(optim_input):
    """The single-tensor reference, the multi-tensor kernels and (the default) torch's fused AdamW
    kernel for amortized steps give the same run (16 steps: past the 10 warm-up searches)."""
    results = []
    for impl in ({"foreach": False}, {"foreach": True, "fused": False}, {}):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid())
        model.to(torch.float64)
        x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float64).reshape(3, 2)
        empty = torch.empty((0,), dtype=torch.float64, requires_grad=True)
        params = list(model.parameters()) + [empty]
        optimizer = make(optim_input, params, **impl)
        for i in range(16):
            if i == 3:  # no gradients at all: a no-op step
                optimizer.step(lambda: torch.zeros((), requires_grad=True) * 1.0)  # reaches no parameter
            else:
                optimizer.step(lambda: model(x).sum() + empty.sum())
        results.append((params, optimizer))
    (p1, o1) = results[0]
    for p2, o2 in results[1:]:
        assert o2.counters == o1.counters
        for a, b in zip(p1, p2):
            torch.testing.assert_close(a, b)
            for name in o1.state[a]:
                torch.testing.assert_close(torch.as_tensor(o1.state[a][name]), torch.as_tensor(o2.state[b][name]))


def test_parameters_of_several_dtypes_in_one_optimizer():
    dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    params = [torch.rand(2, 3, dtype=dtype, requires_grad=True) for dtype in dtypes]
    frozen = torch.randint(1024, (2, 3))
    optimizer = alsals.ALSALS(params + [frozen])

    def closure():
        return sum((p.float() - 0.5).pow(2).sum() for p in params)

    start = closure().item()
    for _ in range(10):
        optimizer.step(closure)
    assert closure().item() < start
    for p in params:
        assert optimizer.state[p]["exp_avg"].dtype == p.dtype


def test_complex_and_sparse_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="complex"):
        alsals.ALSALS([torch.randn(3, dtype=torch.complex64, requires_grad=True)])
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = alsals.ALSALS(embedding.parameters())
    with pytest.raises(ValueError, match="sparse"):
        optimizer.step(lambda: embedding(torch.tensor([1, 2])).sum())
