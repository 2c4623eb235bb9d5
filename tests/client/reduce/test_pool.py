"""`SnapshotPool`: copies lent out of reused buffers, handed back explicitly."""

from __future__ import annotations

import torch

from layerwatch.reduce.pool import SnapshotPool


def test_a_copy_is_private_contiguous_and_equal() -> None:
    pool = SnapshotPool(max_free_bytes=1 << 20)
    source = torch.arange(12.0).reshape(3, 4).t()  # not contiguous
    copy = pool.copy(source)
    assert copy.is_contiguous()
    assert copy.shape == source.shape
    assert torch.equal(copy, source)
    source.add_(1)  # training changes the tensor: the copy keeps the captured values
    assert torch.equal(copy, torch.arange(12.0).reshape(3, 4).t())
    assert pool.lent_bytes == copy.nbytes


def test_a_released_buffer_is_lent_again_and_no_new_memory_is_mapped() -> None:
    pool = SnapshotPool(max_free_bytes=1 << 20)
    first = pool.copy(torch.ones(64, 8))
    pointer = first.data_ptr()
    pool.release(first)
    assert pool.lent_bytes == 0
    assert pool.free_bytes == 64 * 8 * 4
    again = pool.copy(torch.zeros(8, 64))  # same size and dtype, another shape
    assert again.data_ptr() == pointer
    assert again.shape == (8, 64)
    assert torch.equal(again, torch.zeros(8, 64))
    other = pool.copy(torch.zeros(8, 64, dtype=torch.float64))  # another dtype: a new buffer
    assert other.data_ptr() != pointer


def test_a_held_copy_returns_at_its_last_release() -> None:
    pool = SnapshotPool(max_free_bytes=1 << 20)
    copy = pool.copy(torch.ones(10))
    pool.hold(copy)
    pool.release(copy)
    assert pool.lent_bytes == copy.nbytes  # one holder left
    pool.release(copy)
    assert pool.lent_bytes == 0
    pool.release(copy)  # once more: ignored
    assert pool.free_bytes == copy.nbytes


def test_free_buffers_past_the_bound_are_let_go_and_foreign_tensors_ignored() -> None:
    pool = SnapshotPool(max_free_bytes=1000)
    copies = [pool.copy(torch.ones(100)) for _ in range(4)]  # 400 B each
    pool.release(torch.ones(100), None)  # not from the pool
    assert pool.lent_bytes == 1600
    pool.release(*copies)
    assert pool.lent_bytes == 0
    assert pool.free_bytes == 800
