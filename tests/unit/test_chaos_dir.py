"""The chaos run's directory: an earlier run's state in it is refused, not read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos.harness import Chaos, ChaosConfig, main_sync, require_empty


def test_a_new_or_empty_directory_is_taken(tmp_path: Path) -> None:
    require_empty(tmp_path / "new")
    require_empty(tmp_path)


def test_a_directory_with_an_earlier_runs_state_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data" / "services").mkdir(parents=True)
    (tmp_path / "data" / "services" / "payments.db").write_bytes(b"earlier run")
    with pytest.raises(ValueError, match="earlier run's state"):
        require_empty(tmp_path)
    # The run refuses it before it starts anything, and the command says why.
    with pytest.raises(ValueError, match=str(tmp_path)):
        asyncio.run(Chaos(ChaosConfig(data_dir=tmp_path)).run())
    assert main_sync(ChaosConfig(data_dir=tmp_path)) == 2
    assert "give a new or empty directory" in capsys.readouterr().err
    assert (tmp_path / "data" / "services" / "payments.db").read_bytes() == b"earlier run"
