"""Builder option binding and the CLI's user-error contract."""

import pytest
from typer.testing import CliRunner

from data_tools.builders import parse_options
from data_tools.cli import app, main
from xlc.errors import ConfigError


def test_parse_options_typed_by_defaults():
    assert parse_options("icd10cm", ["--full-codes", "--seed", "3", "--test-fraction", "0.1"]) == \
        {"full_codes": True, "seed": 3, "test_fraction": 0.1}
    assert parse_options("icd10cm", ["--no-full-codes"]) == {"full_codes": False}


@pytest.mark.parametrize("args, message", [
    (["--bogus", "1"], "unknown option '--bogus'; valid options: --full-codes, --max-samples, --overwrite, --seed, "
                      "--test-fraction"),
    (["--seed"], "option --seed needs a value"),
    (["--seed", "x"], "--seed='x': expected int"),
])
def test_parse_options_errors_name_the_option(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_options("icd10cm", args)


def test_unknown_dataset_lists_valid_names(capsys):
    with pytest.raises(ConfigError, match="expected one of .*icd10cm"):
        parse_options("nope", [])
    assert main(["build", "nope", "/tmp/never-written"]) == 2
    assert "error: dataset 'nope'" in capsys.readouterr().err


def test_existing_out_dir_is_refused(tmp_path):
    (tmp_path / "keep").write_text("x")
    result = CliRunner().invoke(app, ["build", "icd10cm", str(tmp_path)])
    assert isinstance(result.exception, ConfigError) and "--overwrite" in str(result.exception)
    assert (tmp_path / "keep").read_text() == "x"


@pytest.mark.parametrize("args, message", [
    (["absent.txt", "tst.txt", "out"], "error: absent.txt: cannot read the XC file (No such file or directory)"),
    ([".", "tst.txt", "out"], "error: .: cannot read the XC file (Is a directory)"),
    # a file where OUT_DIR's parent should be: unwritable even for root, unlike a chmod
    (["trn.txt", "tst.txt", "trn.txt/out"], "error: OUT_DIR trn.txt/out: cannot write there (File exists: trn.txt)"),
])
def test_convert_bad_paths_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    for name in ("trn.txt", "tst.txt"):
        (tmp_path / name).write_text("1 4 3\n0 1:1\n")
    assert main(["convert", *args]) == 2
    assert capsys.readouterr().err == message + "\n"
