"""The `xlc` contract for bad input: one line on stderr and exit status 2, no traceback, nothing written."""

from __future__ import annotations

import pytest
import yaml

from xlc.cli import main


def xlc(capsys, *args: str) -> tuple[int, str]:
    """Run `xlc ARGS` in this process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code, capsys.readouterr().err


def test_compare_file_with_a_yaml_syntax_error(tmp_path, capsys):
    path = tmp_path / "compare.yaml"
    path.write_text("name: c\nmethods: [{name: a}\n")
    assert xlc(capsys, "compare", str(path)) == (2, f"error: {path} line 3: not valid YAML "
                                                    "(expected ',' or ']', but got '<stream end>')\n")


def test_compare_with_no_methods_writes_nothing(tmp_path, capsys):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "base": {"name": "t", "data": "absent"}, "methods": []}))
    assert xlc(capsys, "compare", str(path), "--out-dir", str(tmp_path / "out")) == (
        2, f"error: {path}: methods is empty; list at least one {{name, overrides}} or {{name, baseline}}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.yaml"]
