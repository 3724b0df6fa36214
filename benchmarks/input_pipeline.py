"""Input-pipeline throughput on the CPU (images/s): batched DeviceLoader + Augment against a
per-image PIL pipeline (torch DataLoader + per-image transforms) doing the same augmentation
(reflect-pad 4 + random 32x32 crop, horizontal flip, normalisation), in the same run.

    python benchmarks/input_pipeline.py [--data PATH|NAME] [--batch-size 128] [--steps 100]

The data is read through ``wrn.data.load_dataset`` (decoded once into the cache). Each pipeline
is warmed up, then timed over ``--steps`` batches, ``--repeats`` times: mean +- std.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

from wrn.data import load_dataset
from wrn.data.augment import Augment
from wrn.data.catalog import get as dataset_info
from wrn.data.loader import DeviceLoader

DEFAULT_DATA = "../shared/data/cifar10-jpeg.tar.xz"  # the copy beside the repository root


class PerImagePIL(torch.utils.data.Dataset):
    """What torchvision's RandomCrop(32, 4, padding_mode="reflect") + RandomHorizontalFlip +
    ToTensor + Normalize do, one PIL image at a time (written without torchvision)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, padding: int = 4):
        self.images, self.labels, self.padding = images, labels, padding
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        p = self.padding
        im = Image.fromarray(np.asarray(self.images[i]))
        padded = Image.fromarray(np.pad(np.asarray(im), ((p, p), (p, p), (0, 0)), mode="reflect"))
        x, y = np.random.randint(0, 2 * p + 1, 2)
        im = padded.crop((x, y, x + im.width, y + im.height))
        if np.random.rand() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        t = np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((t - self.mean) / self.std), int(self.labels[i])


def timed(run, steps: int, repeats: int, batch: int) -> tuple[float, float]:
    run(min(steps, 10))  # warm-up (and DataLoader worker start, measured below too)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(steps)
        rates.append(steps * batch / (time.perf_counter() - t0))
    return statistics.mean(rates), statistics.stdev(rates) if len(rates) > 1 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA if os.path.exists(DEFAULT_DATA) else "cifar10")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers of the PIL pipeline")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    train = load_dataset(args.data)["train"]
    load_s = time.perf_counter() - t0
    cifar = dataset_info("cifar10")
    mean, std = cifar.mean, cifar.std
    b = args.batch_size
    rows = []

    loader = DeviceLoader(train, b, device="cpu", seed=0)
    aug = Augment(mean, std, crop_padding=4, flip=True, channels_last=True)  # as the fast path (quick) runs
    gen = torch.Generator().manual_seed(0)

    def batched(steps: int, cutout: int = 0) -> None:
        a = aug if not cutout else Augment(mean, std, cutout=cutout, channels_last=True)
        it = loader.epoch(0)
        for _ in range(steps):
            x, y = next(it)
            a(x, gen)

    rows.append(("DeviceLoader + Augment (batched tensors)", *timed(batched, args.steps, args.repeats, b)))
    rows.append(("DeviceLoader + Augment, cutout 16", *timed(lambda s: batched(s, 16), args.steps, args.repeats, b)))

    images = np.asarray(train.images)
    for workers in args.workers:
        ds = PerImagePIL(images, train.labels, mean, std)

        def per_image(steps: int) -> None:
            dl = torch.utils.data.DataLoader(ds, batch_size=b, shuffle=True, num_workers=workers, drop_last=True)
            for i, _ in zip(range(steps), dl):
                pass

        rows.append((f"DataLoader + per-image PIL, {workers} workers", *timed(per_image, args.steps, args.repeats, b)))

    print("command: python " + " ".join(sys.argv))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; data {args.data} ({len(train)} train images, load {load_s:.2f} s)")
    print(f"batch {b}, {args.steps} steps x {args.repeats} repeats\n")
    print("| pipeline | images/s |\n| --- | --- |")
    for name, m, s in rows:
        print(f"| {name} | {m:,.0f} +- {s:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
