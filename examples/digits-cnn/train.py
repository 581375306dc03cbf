"""Training entrypoint: a small CNN; Shipyard seeds torch and enables deterministic algorithms."""

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Input [N, 64] grey levels 0..16 → logits [N, 10]; preprocessing is part of the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(32 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = pixels.reshape(-1, 1, 8, 8) / 16.0
        return self.head(self.features(images))


def train(x, y, *, seed: int, params: dict) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=params["learning_rate"])
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(params["epochs"]):
        order = torch.randperm(len(x_t), generator=generator)
        for start in range(0, len(order), params["batch_size"]):
            batch = order[start : start + params["batch_size"]]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x_t[batch]), y_t[batch])
            loss.backward()
            optimizer.step()
    return model.eval()
