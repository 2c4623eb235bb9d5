"""Which tensors a view draws by default: biases are left out unless asked for."""

from __future__ import annotations


def is_bias(name: str) -> bool:
    """A parameter whose own name starts with ``bias``: ``fc.bias``, and an LSTM's
    ``bias_ih_l0`` or ``bias_hh_l0_reverse``."""
    return name.rsplit(".", 1)[-1].startswith("bias")


def leave_out_biases(
    tensors: list[tuple[str, int]], notes: list[str], what: str
) -> list[tuple[str, int]]:
    """`tensors` without biases; a note counts those left out (`what`: "bias gradients")."""
    kept = [(name, i) for name, i in tensors if not is_bias(name)]
    if len(kept) < len(tensors):
        notes.append(f"{len(tensors) - len(kept)} {what} left out (bias=true shows them)")
    return kept
