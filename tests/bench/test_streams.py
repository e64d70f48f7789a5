"""Streams in one batch: stream i starts at frame i·stride mod T and wraps around."""
from __future__ import annotations

import pytest
import torch

from deltaconvert.bench.streams import stream_batches, stream_offsets


def test_offsets_wrap_and_are_distinct_with_a_coprime_stride():
    assert stream_offsets(4, 10, 3) == [0, 3, 6, 9]
    assert stream_offsets(5, 10, 3) == [0, 3, 6, 9, 2]
    assert len(set(stream_offsets(32, 40))) == 32  # the default stride 7 is coprime with 40
    assert stream_offsets(1, 5) == [0]
    with pytest.raises(ValueError):
        stream_offsets(0, 5)


def test_batches_stack_each_stream_at_its_offset():
    frames = [torch.full((1, 3, 2, 2), float(t)) for t in range(5)]
    assert stream_batches(frames, 1) is frames
    batches = stream_batches(frames, 3, stride=2)
    assert len(batches) == 5 and batches[0].shape == (3, 3, 2, 2)
    for t, batch in enumerate(batches):
        assert [batch[i, 0, 0, 0].item() for i in range(3)] == [(2 * i + t) % 5 for i in range(3)]
