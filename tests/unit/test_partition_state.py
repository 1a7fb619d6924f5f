"""The contiguous-prefix commit rule."""

from bridge.consumer import PartitionState


def test_commit_stops_at_the_first_unfinished_offset() -> None:
    state = PartitionState()
    for offset in range(5):
        state.pending[offset] = False
    state.pending[1] = True
    state.pending[2] = True
    assert state.done_prefix() is None
    state.pending[0] = True
    assert state.done_prefix() == 3
    assert list(state.pending) == [3, 4]
    assert state.outstanding() == 2
    state.pending[4] = True
    assert state.done_prefix() is None
    state.pending[3] = True
    assert state.done_prefix() == 5
    assert state.pending == {}
