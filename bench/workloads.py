"""Benchmark workloads: real training steps (forward, loss, backward, optimizer step) fed by a DataLoader.

Sizes are chosen so one CPU step takes tens of milliseconds on this project's 2-core machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class Workload:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    loss: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]
    device: torch.device

    def batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            for batch in self.loader:
                yield tuple(t.to(self.device, non_blocking=True) for t in batch)

    def step(self, batch: tuple[torch.Tensor, ...]) -> None:
        loss = self.loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @property
    def tensors(self) -> int:
        return sum(1 for _ in self.model.parameters())

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _loader(*tensors: torch.Tensor, batch: int) -> DataLoader:
    return DataLoader(
        TensorDataset(*tensors),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )


def _ce(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def mlp(device: torch.device, width: int = 1024, depth: int = 4, batch: int = 256) -> Workload:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(512, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10)).to(device)
    g = torch.Generator().manual_seed(0)
    data = _loader(
        torch.randn(batch * 8, 512, generator=g), torch.randint(0, 10, (batch * 8,), generator=g), batch=batch
    )
    return Workload("mlp", model, torch.optim.AdamW(model.parameters(), lr=1e-4), data, _ce, device)


def cnn(device: torch.device, batch: int = 64) -> Workload:
    torch.manual_seed(0)

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)
        )

    model = nn.Sequential(
        block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)
    ).to(device)
    g = torch.Generator().manual_seed(0)
    data = _loader(
        torch.randn(batch * 4, 3, 32, 32, generator=g),
        torch.randint(0, 10, (batch * 4,), generator=g),
        batch=batch,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return Workload("cnn", model, opt, data, _ce, device)


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, seq: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.1, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        h = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def transformer(
    device: torch.device,
    vocab: int = 1000,
    dim: int = 128,
    layers: int = 2,
    heads: int = 4,
    seq: int = 64,
    batch: int = 16,
    name: str = "transformer",
) -> Workload:
    torch.manual_seed(0)
    model = TinyGPT(vocab, dim, layers, heads, seq).to(device)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch * 4, seq + 1), generator=g)

    def lm_loss(m: nn.Module, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = b[0]
        logits = m(x[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))

    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    return Workload(name, model, opt, _loader(tokens, batch=batch), lm_loss, device)


def many_tensors(device: torch.device, blocks: int = 150, dim: int = 64, batch: int = 64) -> Workload:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU()]
    model = nn.Sequential(*layers, nn.Linear(dim, 10)).to(device)
    g = torch.Generator().manual_seed(0)
    data = _loader(
        torch.randn(batch * 8, dim, generator=g), torch.randint(0, 10, (batch * 8,), generator=g), batch=batch
    )
    return Workload("many_tensors", model, torch.optim.AdamW(model.parameters(), lr=1e-4), data, _ce, device)


def gpt2_small(device: torch.device) -> Workload:
    """GPT-2-small-sized (12 layers, 768 wide, 50257 vocab, 124M+ parameters); for a GPU."""
    return transformer(device, vocab=50257, dim=768, layers=12, heads=12, seq=512, batch=8, name="gpt2_small")


def scaled_mlp(device: torch.device, params: float, batch: int = 32) -> Workload:
    """Four square layers holding about ``params`` parameters in total."""
    width = max(16, int((params / 4) ** 0.5))
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(width, width), nn.ReLU())]).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * 2, width, generator=g)
    data = _loader(x, torch.randn(batch * 2, width, generator=g), batch=batch)
    mse = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    return Workload(
        f"mlp_{params:.0e}", model, torch.optim.SGD(model.parameters(), lr=1e-3), data, mse, device
    )


def split_mlp(device: torch.device, tensors: int, params: float = 1e6, batch: int = 32) -> Workload:
    """About ``params`` parameters spread over ``tensors`` parameter tensors (a deep, narrow MLP)."""
    layers = max(1, tensors // 2)
    width = max(4, int((params / layers) ** 0.5))
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.Tanh())]).to(
        device
    )
    g = torch.Generator().manual_seed(0)
    data = _loader(
        torch.randn(batch * 2, width, generator=g), torch.randn(batch * 2, width, generator=g), batch=batch
    )
    mse = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    return Workload(
        f"tensors_{tensors}", model, torch.optim.SGD(model.parameters(), lr=1e-3), data, mse, device
    )


def grouped_mlp(device: torch.device, groups: int, tensors: int = 64) -> Workload:
    """``split_mlp``'s model under AdamW with its tensors spread over ``groups`` param groups, each with a
    learning rate of its own and every other group without weight decay (layer-wise learning rates)."""
    w = split_mlp(device, tensors)
    params = list(w.model.parameters())
    size = -(-len(params) // groups)
    parts = [
        {
            "params": params[i : i + size],
            "lr": 1e-4 * (1 + i / len(params)),
            "weight_decay": 0.01 * (i // size % 2),
        }
        for i in range(0, len(params), size)
    ]
    return Workload(f"groups_{len(parts)}", w.model, torch.optim.AdamW(parts), w.loader, w.loss, device)


STANDARD = {"mlp": mlp, "cnn": cnn, "transformer": transformer, "many_tensors": many_tensors}
