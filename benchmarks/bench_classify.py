"""Training throughput of the shared loop on CPU: torch threads and image sizes, side by side.

Run: ``python benchmarks/bench_classify.py [backbone ...]`` (default: resnet18 test_vit).
Prints training images/s for 1 and 2 torch threads at 64 and 96 px (batch 16), measured in one
process, so the ratios are comparable even on a busy machine (the absolute numbers are not).
"""

from __future__ import annotations

import sys
import time

import torch


def images_per_second(name: str, size: int, threads: int, steps: int = 6, batch: int = 16) -> float:
    from hemaflow.lib.nets import ImageNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = ImageNet(name, 5, img_size=size)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, size, size)
    y = torch.arange(batch) % 5
    net.train()
    for i in range(steps + 1):
        if i == 1:  # the first step warms up allocators and kernels
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main(names: list[str]) -> None:
    print(f"{'backbone':<16}{'px':>5}{'1 thread':>12}{'2 threads':>12}{'ratio':>8}")
    for name in names:
        for size in (64, 96):
            one = images_per_second(name, size, 1)
            two = images_per_second(name, size, 2)
            print(f"{name:<16}{size:>5}{one:>12.1f}{two:>12.1f}{two / one:>8.2f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet18", "test_vit"])
