"""`xlc.progress`: one switch turns every bar off (the CLI's --json), and only rank 0 draws."""

from xlc.progress import SWITCH, progress, quiet


def test_bars_only_on_rank_0_and_never_when_quiet(monkeypatch):
    monkeypatch.setenv(SWITCH, "1")  # so that monkeypatch restores it after quiet()
    monkeypatch.delenv("RANK", raising=False)
    assert not progress(range(3)).disable  # one process: rank 0
    monkeypatch.setenv("RANK", "1")  # torchrun and Ray Train set it
    assert progress(range(3)).disable
    monkeypatch.setenv("RANK", "0")
    assert not progress(total=3).disable
    quiet()
    assert progress(range(3)).disable and progress(total=3).disable
