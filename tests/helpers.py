"""Tiny datasets the tests write: image folders in the layout `wrn train --data FOLDER` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image_folder(root: Path, n_train: int, n_test: int, size: int, *, classes: int = 4,
                       random_labels: bool = False, seed: int = 0) -> Path:
    """root/{train,test}/class<k>/*.png. By default noisy images whose class is a colour cast
    (learnable); with ``random_labels`` pure noise under random labels (only memorisable)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c = int(rng.integers(0, classes)) if random_labels else i % classes
            img = rng.integers(0, 256 if random_labels else 120, (size, size, 3)).astype(np.uint8)
            if not random_labels:
                img[..., c % 3] += np.uint8(80 + 40 * (c // 3))
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    return root


def break_at_step(monkeypatch, step: int, how: str = "nan") -> None:
    """The training step ``step`` (0-based) feeds a NaN batch (a diverging run) or, with
    ``how="interrupt"``, is hit by Ctrl-C."""
    from wrn.train import step as train_steps

    real = train_steps.make_train_step

    def make(*args, **kwargs):
        train_step = real(*args, **kwargs)
        calls = {"n": 0}

        def patched(x, y):
            calls["n"] += 1
            if calls["n"] == step + 1:
                if how == "interrupt":
                    raise KeyboardInterrupt
                x = x * float("nan")
            return train_step(x, y)

        return patched

    monkeypatch.setattr(train_steps, "make_train_step", make)
