"""The benchmark tasks of ``alsals_bench.tasks``: registry, seeding, batches, loss, evaluation.

These tests read the datasets through the normal cache (``$ALSALS_CACHE_DIR`` or the user cache),
as the benchmark does; the first run parses them once.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import subprocess
import sys

import pytest
import torch

from alsals_bench.api import Task, TaskInstance
from alsals_bench.tasks import TASKS, get_task, tasks_of_split

FIRST_DEV = ["digits_mlp", "mnist_cnn", "mnist1d_cnn", "bbc_transformer", "shakespeare_gpt", "shakespeare_hf_gpt2"]
#: the dev tasks added in the sixth round (first run apart, as the "probe" split)
WIDER_DEV = ["friedman_mlp", "mnist1d_gru", "genre_gru"]
DEV = FIRST_DEV + WIDER_DEV
TEST = ["mnist_resnet", "mnist_vit", "bbc_gru", "bbc_lstm_lm", "breast_cancer_mlp", "diabetes_mlp"]
#: the twelfth round's second test split, added after the first had been seen
HOLDOUT = ["mnist_mlp", "bbc_cnn", "bbc_gpt", "clusters_mlp", "friedman3_mlp"]
EXPECTED_ORDER = DEV + TEST + HOLDOUT
METRICS = {"classification": ("accuracy", True), "regression": ("mse", False),
           "language_model": ("nats_per_byte", False)}
#: a learning rate for the short Adam run of each task (30 steps)
SHORT_RUN_LR = {"bbc_transformer": 3e-3, "bbc_gru": 1e-2, "bbc_lstm_lm": 3e-3, "genre_gru": 1e-2,
                "mnist1d_gru": 1e-2}
SHORT_RUN_STEPS = 30


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run on one thread, as the benchmark does."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch_indices(instance: TaskInstance, size: int, seed: int = 0) -> torch.Tensor:
    """``size`` training indices from a private generator, always including the last one."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(instance.n_train, (size,), generator=generator)
    indices[-1] = instance.n_train - 1
    return indices


def _probe_loss(instance: TaskInstance, indices: torch.Tensor) -> float:
    """Training loss on ``indices`` in eval mode (no dropout, BatchNorm running stats)."""
    model = instance.model
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = instance.loss(model, instance.batch(indices)).item()
    model.train(was_training)
    return value


# ------------------------------------------------------------------------------------------------
# The registry


def test_registry_order_and_lookup():
    assert list(TASKS) == EXPECTED_ORDER
    for name, task in TASKS.items():
        assert isinstance(task, Task) and task.name == name
        assert get_task(name) is task


def test_the_first_tasks_and_the_sixth_rounds_are_the_dev_split_and_the_new_ones_the_test_split():
    assert tasks_of_split("dev") == DEV
    assert tasks_of_split("test") == TEST
    # the test split covers the four families, and since the sixth round the dev split covers the
    # tabular family and a recurrent net too
    assert {TASKS[n].family for n in TEST} == {"image", "tabular", "text", "language_model"}
    assert {TASKS[n].family for n in DEV} == {"image", "tabular", "text", "language_model"}


def test_the_recipe_follows_the_architecture():
    for name, task in TASKS.items():
        transformer = name in ("bbc_transformer", "shakespeare_gpt", "shakespeare_hf_gpt2", "mnist_vit", "bbc_gpt")
        assert task.transformer is transformer, name
        assert task.weight_decay == (0.1 if transformer else 0.01)
        assert task.grad_clip == (1.0 if transformer else None)
    assert {n for n, t in TASKS.items() if t.batchnorm} == {"mnist_cnn", "mnist_resnet"}


def test_the_holdout_split_covers_the_four_families_with_pairs_no_other_task_has():
    from alsals_bench.runner import resolve_tasks

    assert tasks_of_split("holdout") == HOLDOUT
    assert resolve_tasks(["holdout"]) == HOLDOUT and set(HOLDOUT) <= set(resolve_tasks(None))
    assert {TASKS[n].family for n in HOLDOUT} == {"image", "tabular", "text", "language_model"}
    # a new (data, architecture) pair each: the model class and the data builder differ from every
    # dev and test task's pair
    def pair(name):
        instance = TASKS[name].build(0)
        return type(instance.model).__name__, str(instance.model)[:200], instance.n_train
    others = {pair(n) for n in DEV + TEST}
    for name in HOLDOUT:
        assert pair(name) not in others, name


def test_holdout_tables_are_split_disjoint_and_fixed():
    from alsals_bench import data

    clusters = data.load_clusters()
    assert [len(clusters.split(s)[1]) for s in ("train", "val", "test")] == [800, 200, 200]
    assert clusters.class_names == ("0", "1", "2", "3") and set(clusters.y_train.tolist()) == {0, 1, 2, 3}
    assert (data.load_clusters().y_test == clusters.y_test).all()
    friedman3 = data.load_friedman3()
    assert [len(friedman3.split(s)[1]) for s in ("train", "val", "test")] == [800, 200, 200]
    for splits in (clusters, friedman3):
        rows = {tuple(row) for s in ("train", "val", "test") for row in splits.split(s)[0].tolist()}
        assert len(rows) == sum(len(splits.split(s)[1]) for s in ("train", "val", "test"))
    assert (data.load_friedman3().x_val == friedman3.x_val).all()
    assert friedman3.y_train.dtype.name == "float32" and friedman3.x_train.shape[1] == 4


def test_a_task_must_declare_a_known_split():
    with pytest.raises(ValueError, match="split"):
        dataclasses.replace(TASKS["digits_mlp"], split="train")


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(ValueError) as caught:
        get_task("cifar_resnet")
    for name in EXPECTED_ORDER:
        assert name in str(caught.value)


@pytest.mark.parametrize("name", EXPECTED_ORDER)
def test_task_fields_are_consistent(name):
    task = TASKS[name]
    assert (task.metric, task.metric_higher_is_better) == METRICS[task.kind]
    assert task.batch_size > 0 and task.target_loss > 0 and task.description
    assert task.steps_full / 6 <= task.steps_quick <= task.steps_full / 4
    assert pickle.loads(pickle.dumps(task)).build is task.build  # sent to workers by reference


def test_importing_tasks_does_not_import_transformers():
    code = "import sys, alsals_bench.tasks; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------
# Building


@pytest.mark.parametrize("name", EXPECTED_ORDER)
def test_same_seed_gives_identical_weights_whatever_the_global_rng(name):
    task = TASKS[name]
    torch.manual_seed(123)
    first = task.build(0).model.state_dict()
    torch.manual_seed(456)
    state = torch.get_rng_state()
    second = task.build(0).model.state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # build leaves the global RNG alone
    other = task.build(1).model.state_dict()
    assert first.keys() == second.keys() == other.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("name", EXPECTED_ORDER)
def test_batch_and_loss(name):
    task = TASKS[name]
    instance = task.build(0)
    assert instance.model.training
    indices = _batch_indices(instance, task.batch_size)
    batch = instance.batch(indices)
    if task.kind == "language_model":
        inputs, targets = batch
        assert inputs.shape == targets.shape and inputs.shape[0] == task.batch_size
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the next bytes
    else:
        assert len(batch[1]) == task.batch_size
        if task.kind == "regression":
            assert batch[1].dtype == torch.float32
    loss = instance.loss(instance.model, batch)
    assert loss.dim() == 0 and loss.requires_grad and math.isfinite(loss.item())
    loss.backward()
    for parameter in instance.model.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


# ------------------------------------------------------------------------------------------------
# Evaluation


@pytest.mark.parametrize("name", EXPECTED_ORDER)
def test_evaluate_keys_modes_and_determinism(name):
    task = TASKS[name]
    instance = task.build(0)
    model = instance.model
    last = list(model.modules())[-1]
    last.eval()  # a mixed state must be restored exactly
    modes = [m.training for m in model.modules()]
    metric = task.metric
    for split in ("val", "test"):
        result = instance.evaluate(model, split)
        assert set(result) == {"loss", metric}
        assert all(isinstance(v, float) and math.isfinite(v) for v in result.values())
        if metric == "accuracy":
            assert 0.0 <= result["accuracy"] <= 1.0
        else:
            assert result[metric] == result["loss"]
        assert instance.evaluate(model, split) == result
        assert [m.training for m in model.modules()] == modes
    model.eval()
    instance.evaluate(model, "val")
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="val"):
        instance.evaluate(model, "train")


def test_language_models_have_comparable_initial_nats_per_byte():
    for name in ("shakespeare_gpt", "shakespeare_hf_gpt2", "bbc_lstm_lm"):
        instance = TASKS[name].build(0)
        nats = instance.evaluate(instance.model, "val")["nats_per_byte"]
        assert abs(nats - math.log(256)) < 0.1  # close to uniform over bytes at initialisation


# ------------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("name", EXPECTED_ORDER)
def test_short_adam_run_lowers_the_training_loss(name):
    task = TASKS[name]
    instance = task.build(0)
    probe = _batch_indices(instance, 256, seed=1)
    before = _probe_loss(instance, probe)
    optimizer = torch.optim.Adam(instance.model.parameters(), lr=SHORT_RUN_LR.get(name, 1e-3))
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(SHORT_RUN_STEPS):
            indices = torch.randint(instance.n_train, (task.batch_size,), generator=generator)
            optimizer.zero_grad()
            instance.loss(instance.model, instance.batch(indices)).backward()
            optimizer.step()
    after = _probe_loss(instance, probe)
    assert after < before - 0.02, (before, after)


def test_the_gru_reads_words_the_dev_transformer_never_sees():
    from alsals_bench import tasks

    texts = ["w" + " w".join(str(i) for i in range(200))]
    vocabulary = {f"w{i}": i + 2 for i in range(200)}
    dev = tasks.encode_texts(texts, vocabulary, tasks.BBC_SEQ_LEN)
    test = tasks.encode_texts(texts, vocabulary, tasks.BBC_GRU_LEN, offset=tasks.BBC_GRU_OFFSET)
    assert not set(dev[0].tolist()) & set(test[0].tolist())
    short = tasks.encode_texts(["only three words"], {}, 8, offset=64)
    assert short[0].tolist() == [tasks.UNK_ID] + [tasks.PAD_ID] * 7  # never an all-padding row


def test_the_lstm_corpus_is_not_a_dev_language_model_corpus():
    from alsals_bench import data

    bbc, plays = data.load_bbc_bytes(), data.load_shakespeare()
    assert bytes(bbc.train[:2000]) not in bytes(plays.train)
    assert len(bbc.test) > 100_000 and len(bbc.val) > 100_000


# ------------------------------------------------------------------------------------------------
# The sixth round's dev tasks (first run apart as the "probe" split)


def test_the_wider_dev_tasks_run_with_the_dev_split_and_the_probe_split_is_gone():
    from alsals_bench.runner import resolve_tasks

    assert all(TASKS[n].split == "dev" for n in WIDER_DEV)
    assert resolve_tasks(["dev"]) == DEV
    assert set(WIDER_DEV) <= set(resolve_tasks(None))
    with pytest.raises(KeyError, match="or a split: dev, test, holdout, scale"):
        resolve_tasks(["probe"])


def test_wider_dev_data_splits_are_disjoint_and_fixed():
    from alsals_bench import data

    friedman = data.load_friedman1()
    assert [len(friedman.split(s)[1]) for s in ("train", "val", "test")] == [800, 200, 200]
    rows = {tuple(row) for s in ("train", "val", "test") for row in friedman.split(s)[0].tolist()}
    assert len(rows) == 1_200
    assert friedman.y_train.dtype.name == "float32" and friedman.class_names == ()
    assert (data.load_friedman1().x_val == friedman.x_val).all()

    genres = data.load_shakespeare_genres()
    assert genres.class_names == ("comedies", "histories", "problems", "roman", "romances", "tragedies")
    assert (len(genres.x_val), len(genres.x_test)) == (222, 222)
    assert len(set(genres.x_train) | set(genres.x_val) | set(genres.x_test)) == (
        len(genres.x_train) + len(genres.x_val) + len(genres.x_test))
    assert all(len(window.split()) == data.GENRE_WINDOW_WORDS for window in genres.x_val)
    assert set(genres.y_train.tolist()) == set(range(6))  # every genre is trained on

