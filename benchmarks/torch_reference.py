"""The hand-written PyTorch 2 training loop that fertrain's speed is measured against.

Same mini-Xception as configs/mini_xception.yaml (58,423 parameters, L2 0.01 on the kernels),
channels-last memory format, Adam, uint8 images rescaled on the fly, random data: throughput only.

    .venv/bin/python benchmarks/torch_reference.py --batch-size 128 --steps 30 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


class SeparableConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
        )


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))
        self.body = nn.Sequential(
            SeparableConv(cin, cout),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            SeparableConv(cout, cout),
            nn.BatchNorm2d(cout),
            nn.MaxPool2d(3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class MiniXception(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), num_classes: int = 7) -> None:
        super().__init__()
        stem = []
        cin = 1
        for _ in range(2):
            stem += [nn.Conv2d(cin, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)]
            cin = 8
        self.stem = nn.Sequential(*stem)
        blocks = []
        for width in widths:
            blocks.append(ResidualBlock(cin, width))
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cin, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x).mean(dim=(2, 3))

    def l2_penalty(self, l2: float) -> torch.Tensor:
        # Keras' L2 regulariser: l2 * sum(w**2) on the regularised kernels (stem and separable convs).
        kernels = [m.weight for m in self.stem if isinstance(m, nn.Conv2d)]
        kernels += [m.weight for b in self.blocks for m in b.body.modules() if isinstance(m, nn.Conv2d)]
        return l2 * sum((w * w).sum() for w in kernels)


def train_throughput(
    batch_size: int,
    steps: int,
    warmup: int,
    threads: int,
    l2: float,
    channels_last: bool = True,
    repeats: int = 3,
) -> dict:
    """Best and median images/s of `repeats` windows of `steps` training steps (as `fertrain benchmark`
    reports its own), after `warmup` steps; then inference images/s."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = MiniXception().to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    images = torch.randint(0, 256, (batch_size * 4, 1, 48, 48), dtype=torch.uint8)
    labels = torch.randint(0, 7, (batch_size * 4,))
    model.train()

    def train_steps(count: int) -> float:
        start = time.perf_counter()
        for step in range(count):
            i = step % 4
            x = images[i * batch_size : (i + 1) * batch_size].float().div_(255.0)
            x = x.contiguous(memory_format=memory_format)
            y = labels[i * batch_size : (i + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y) + model.l2_penalty(l2)
            loss.backward()
            optimizer.step()
        return batch_size * count / (time.perf_counter() - start)

    train_steps(warmup)
    windows = sorted(train_steps(steps) for _ in range(repeats))

    model.eval()
    with torch.inference_mode():
        x = images.float().div_(255.0).contiguous(memory_format=memory_format)
        model(x)
        start = time.perf_counter()
        passes = 5
        for _ in range(passes):
            model(x)
        predict_seconds = time.perf_counter() - start
    return {
        "params": sum(t.numel() for t in model.state_dict().values() if t.is_floating_point()),
        "batch_size": batch_size,
        "threads": threads,
        "channels_last": channels_last,
        "train_images_per_s": round(windows[-1], 1),
        "train_images_per_s_median": round(windows[len(windows) // 2], 1),
        "predict_images_per_s": round(passes * len(x) / predict_seconds, 1),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="Training steps per timed window.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed windows; the best one counts.")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--l2", type=float, default=0.01)
    parser.add_argument("--channels-first", action="store_true", help="NCHW instead of channels-last")
    args = parser.parse_args()
    result = train_throughput(
        args.batch_size,
        args.steps,
        args.warmup,
        args.threads,
        args.l2,
        channels_last=not args.channels_first,
        repeats=args.repeats,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
