"""Process layout from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK).

Without torchrun this is a single process: rank 0 of 1. Only rank 0 writes files.
"""

from __future__ import annotations

import os


def world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def is_main() -> bool:
    return world()[0] == 0
