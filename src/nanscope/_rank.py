"""Which process of a distributed job this is: only global rank 0 writes the run's files."""

from __future__ import annotations

import os

__all__ = ["distributed_rank", "is_rank_zero"]


def is_rank_zero() -> bool:
    """Global rank 0 of an initialized process group, else ``$RANK`` (set by torchrun) is ``0`` or unset."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except (ImportError, RuntimeError):
        pass
    return os.environ.get("RANK", "0") == "0"


def distributed_rank() -> int | None:
    """This process's global rank in a process group of more than one rank, else ``None``."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.get_rank()
    except (ImportError, RuntimeError):
        pass
    return None
