"""`xlc data stats`: exact numbers on a converted XC file, PNG written; `bench.main` runs end to end."""

import json

import pytest
from typer.testing import CliRunner

from data_tools import bench
from data_tools.cli import app
from data_tools.xc import convert_xc
from xlc.data.stats import dataset_stats

TRAIN = "4 6 5\n1,3 0:0.5\n 2:1\n4 3\n0,3,1 5:1\n"
TEST = "2 6 5\n2 0:1\n3\n"


def test_stats_numbers_and_png(tmp_path):
    (tmp_path / "trn.txt").write_text(TRAIN)
    (tmp_path / "tst.txt").write_text(TEST)
    out = convert_xc(tmp_path / "trn.txt", tmp_path / "tst.txt", tmp_path / "ds")
    s = dataset_stats(out)
    # train counts per label: [1, 2, 0, 2, 1]
    assert (s.num_train, s.num_test, s.num_labels) == (4, 2, 5)
    assert s.labels_per_sample == 6 / 4 and s.max_labels_per_sample == 3 and s.rows_without_labels == 1
    assert s.labels_unseen_in_train == 1 and s.test_labels_unseen_in_train == 1
    assert s.label_frequency_quantiles[0.5] == 1 and s.label_frequency_quantiles[1.0] == 2
    assert s.head_labels_for_half_mass == 2  # 2 + 2 of 6 occurrences
    result = CliRunner().invoke(app, ["stats", str(out), "--plot", str(tmp_path / "h.png")])
    assert result.exit_code == 0, result.output
    assert "samples: 4 train, 2 test" in result.output
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # four spawned interpreters importing torch, one starting Ray: ~30 s idle, more when loaded
def test_bench_main_small(tmp_path, capsys):
    assert bench.main(["--xc-mb", "0.2", "--ray", "--ray-epochs", "2", "--work-dir", str(tmp_path), "--json"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["stream_rows"] == 10_000  # the generator writes 10,000-row chunks; one exceeds 0.2 MB
    assert results["convert_mb"] > 0.2
    assert results["convert_mb_per_s"] == pytest.approx(results["convert_mb"] / results["convert_seconds"])
    assert results["ray_stream_rows_per_s"] > 0  # Ray Data streamed rows in the epochs after the first
    for stage in ("convert", "stream", "ray_stream"):  # each stage's own process, in bytes: pyarrow alone > 64 MiB
        assert 2**26 < results[f"{stage}_peak_rss_bytes"] < 2**36, stage
