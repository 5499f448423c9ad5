"""The networks of the benchmark tasks (plain torch; the Hugging Face GPT-2 is built in ``tasks``).

Dev-split models: the MLPs and CNNs are built inline in :mod:`alsals_bench.tasks`; the transformer
pieces (:class:`SelfAttention`, :class:`Block`, :class:`TransformerClassifier`, :class:`ByteGPT`)
live here. Test-split models, of kinds the defaults were never chosen on: :class:`ResNet`
(residual CNN with BatchNorm), :class:`PatchTransformer` (a ViT on 7x7 patches),
:class:`GRUClassifier` (a recurrent text classifier), :class:`ByteLSTM` (a byte-level LSTM
language model) and :func:`tabular_mlp`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PAD_ID, UNK_ID = 0, 1


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



class ByteGPT(nn.Module):
    """A GPT-2-style byte-level decoder: learned positions, pre-LN blocks, tied output head.

    Initialised as GPT-2 (normal, std 0.02; residual projections 0.02 / sqrt(2 * n_layers)).
    Input ``int64 (batch, time <= block_size)``; output logits ``(batch, time, vocab_size)``.
    """

    def __init__(
        self, vocab_size: int = 256, block_size: int = 64, d_model: int = 64, n_layers: int = 4,
        n_heads: int = 4, dropout: float = 0.1,
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


# ----------------------------------------------------------------------------------------------
# Test-split models


class ResidualBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; a 1x1 strided conv + BN shortcut when
    the shape changes (the ResNet "B" option)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One block."""
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for 28x28 grey images: a strided 3x3 stem (to 14x14), one residual block at
    ``width`` channels, one at ``2*width`` with stride 2 (to 7x7), global average pool, linear head.
    """

    def __init__(self, width: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.Sequential(ResidualBlock(width, width), ResidualBlock(width, 2 * width, 2))
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images ``(batch, 1, 28, 28)``."""
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class PatchTransformer(nn.Module):
    """A ViT-style classifier: non-overlapping ``patch x patch`` patches, linearly embedded, a
    learned class token and positions, pre-LN encoder blocks (:class:`Block`), head on the class
    token. Images ``(batch, 1, side, side)``."""

    def __init__(
        self, side: int = 28, patch: int = 7, d_model: int = 64, n_heads: int = 4, n_layers: int = 2,
        d_ff: int = 128, dropout: float = 0.1, n_classes: int = 10,
    ) -> None:
        super().__init__()
        if side % patch:
            raise ValueError(f"side {side} is not a multiple of the patch size {patch}")
        self.patch = patch
        n_patches = (side // patch) ** 2
        self.embed = nn.Linear(patch * patch, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.positions = nn.Parameter(torch.randn(1, n_patches + 1, d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, dropout, causal=False) for _ in range(n_layers)
        )
        self.ln_final = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        b = images.shape[0]
        p = self.patch
        patches = images.unfold(2, p, p).unfold(3, p, p).reshape(b, -1, p * p)
        x = torch.cat([self.cls.expand(b, -1, -1), self.embed(patches)], dim=1)
        x = self.dropout(x + self.positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_final(x[:, 0]))


class GRUClassifier(nn.Module):
    """Word embeddings, a one-layer GRU, the masked mean of its outputs, dropout, linear head.

    Input: ``int64 (batch, length)`` token ids with :data:`PAD_ID` padding.
    """

    def __init__(
        self, vocab_size: int, n_classes: int, d_embed: int = 64, hidden: int = 64,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_embed, padding_idx=PAD_ID)
        self.gru = nn.GRU(d_embed, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Class logits for token ids ``ids``."""
        keep = (ids != PAD_ID).unsqueeze(-1).float()
        outputs, _ = self.gru(self.dropout(self.tokens(ids)))
        pooled = (outputs * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


class ConvTextClassifier(nn.Module):
    """Word embeddings, one 1-D convolution over the words (ReLU), the masked max over positions,
    dropout, linear head (a text CNN: no recurrence, no attention).

    Input: ``int64 (batch, length)`` token ids with :data:`PAD_ID` padding.
    """

    def __init__(
        self, vocab_size: int, n_classes: int, d_embed: int = 64, channels: int = 64, width: int = 5,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_embed, padding_idx=PAD_ID)
        self.conv = nn.Conv1d(d_embed, channels, width, padding=width // 2)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Class logits for token ids ``ids``."""
        features = torch.relu(self.conv(self.dropout(self.tokens(ids)).transpose(1, 2)))
        padded = (ids == PAD_ID).unsqueeze(1)
        pooled = features.masked_fill(padded, float("-inf")).amax(dim=2)
        pooled = torch.where(torch.isfinite(pooled), pooled, torch.zeros_like(pooled))  # an empty text
        return self.head(self.dropout(pooled))


class SequenceGRU(nn.Module):
    """A GRU over a sequence of scalars ``(batch, length)``, mean-pooled, and a linear head."""

    def __init__(self, n_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for signals ``x`` of shape ``(batch, length)``."""
        outputs, _ = self.gru(x.unsqueeze(-1))
        return self.head(outputs.mean(dim=1))


class ByteLSTM(nn.Module):
    """A byte-level LSTM language model: embedding, ``n_layers`` LSTM layers, dropout, linear head.

    Input ``int64 (batch, time)``; output next-byte logits ``(batch, time, vocab_size)``.
    """

    def __init__(
        self, vocab_size: int = 256, d_embed: int = 64, hidden: int = 192, n_layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_embed)
        self.lstm = nn.LSTM(d_embed, hidden, num_layers=n_layers, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-byte logits for every position of ``ids``."""
        outputs, _ = self.lstm(self.dropout(self.tokens(ids)))
        return self.head(self.dropout(outputs))


def tabular_mlp(d_in: int, d_out: int, hidden: int = 64, dropout: float = 0.1) -> nn.Module:
    """``d_in``-``hidden``-``hidden``-``d_out`` ReLU MLP with dropout after each hidden layer."""
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, d_out),
    )
