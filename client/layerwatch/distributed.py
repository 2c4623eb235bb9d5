"""The process's rank under `torch.distributed`: 0 when it is not in use."""

from __future__ import annotations

import sys

__all__ = ["current_rank"]


def current_rank() -> int:
    """This process's rank in the default process group, else 0 (torch is not imported
    for the question: a process that never imported it is not distributed)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    dist = torch.distributed
    return int(dist.get_rank()) if dist.is_available() and dist.is_initialized() else 0
