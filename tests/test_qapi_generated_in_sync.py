"""vmd/_generated is exactly what the generator makes of schema/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qapi.main import generate

ROOT = Path(__file__).resolve().parent.parent


def test_generated_in_sync(tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    files = generate("schema/qapi-schema.json", str(tmp_path))
    committed = ROOT / "vmd" / "_generated"
    expected = sorted(p.name for p in committed.glob("*.py"))
    assert sorted(files) == expected
    for name in files:
        assert (tmp_path / name).read_text() == (committed / name).read_text(), (
            f"{name} is stale: run python -m qapi schema/qapi-schema.json "
            "-o vmd/_generated")
    assert os.path.exists(committed / "__init__.py")
