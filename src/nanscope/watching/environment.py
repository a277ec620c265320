"""The ``environment`` block of a report: enough to reproduce and to tell runs apart."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["environment"]


def environment(models: Iterable[nn.Module] = ()) -> dict[str, Any]:
    from nanscope import __version__

    devices: set[str] = set()
    dtypes: set[str] = set()
    n_params = 0
    for model in models:
        for p in model.parameters():
            devices.add(str(p.device))
            dtypes.add(str(p.dtype).removeprefix("torch."))
            n_params += p.numel()
    return {
        "nanscope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "devices": sorted(devices),
        "dtypes": sorted(dtypes),
        "parameters": n_params,
        "argv": list(sys.argv),
    }
