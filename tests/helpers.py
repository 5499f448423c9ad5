"""Small models and data shared by the tests."""

import torch
from torch import nn


def regression_data(n=256, dim=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dim, generator=gen)
    w = torch.randn(dim, 1, generator=gen)
    y = (X @ w).squeeze(-1) + 0.1 * torch.randn(n, generator=gen)
    return X, y


def mlp(dim=10, hidden=32, dropout=0.0, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    layers = [nn.Linear(dim, hidden), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, 1))
    return nn.Sequential(*layers).to(dtype)


class SmallCNN(nn.Module):
    """A CNN with BatchNorm and Dropout for 1x12x12 inputs, 4 classes."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 3 * 3, 4))

    def forward(self, x):
        return self.head(self.features(x))


def image_data(n=256, seed=0):
    """Four classes of 12x12 images: a bright quadrant per class, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    X = 0.5 * torch.randn(n, 1, 12, 12, generator=gen)
    for k in range(4):
        r, c = divmod(k, 2)
        X[y == k, :, r * 6:(r + 1) * 6, c * 6:(c + 1) * 6] += 1.0
    return X, y


def batches(n, batch_size, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, n, (batch_size,), generator=gen) for _ in range(steps)]
