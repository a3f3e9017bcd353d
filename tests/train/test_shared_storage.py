"""The multi-node storage rule (`xlc.train.driver.check_shared_storage`): on more than one node, checkpoints go
to an object store or to a filesystem the config declares shared (`storage.shared: true`, e.g. NFS); a local
disk is refused with one line naming the key, the node count and both fixes. The Ray side (a real two-node
cluster) is tests/cluster/test_two_nodes.py."""

from __future__ import annotations

import pytest
import yaml

from xlc import config as xconfig
from xlc.errors import ConfigError
from xlc.train.driver import check_shared_storage


def _cfg(**storage) -> xconfig.RunConfig:
    return xconfig.from_dict({"name": "r", "data": "/data/x", "storage": storage})


@pytest.mark.parametrize("storage, nodes", [
    ({"path": "/ckpt"}, 1),  # one node: any local path is shared by construction
    ({}, 1),
    ({"path": "s3://bucket/xlc"}, 2),
    ({"path": "gs://bucket/xlc"}, 8),
    ({"path": "/mnt/nfs/ckpt", "shared": True}, 2),
])
def test_allowed(storage, nodes):
    check_shared_storage(_cfg(**storage), nodes)


@pytest.mark.parametrize("storage, named", [
    ({"path": "/ckpt"}, "storage.path=/ckpt:"),
    ({"path": "file:///ckpt"}, "storage.path=file:///ckpt:"),
    ({}, "storage.path=null (default: xlc-runs/checkpoints):"),
])
def test_a_local_disk_on_two_nodes_is_refused_with_the_fixes(storage, named):
    with pytest.raises(ConfigError) as e:
        check_shared_storage(_cfg(**storage), 2)
    message = str(e.value)
    assert message.startswith(named) and "\n" not in message
    assert "the cluster has 2 nodes" in message
    assert "storage.path=s3://" in message and "storage.shared=true" in message


def test_shared_is_a_typed_key():
    assert _cfg(path="/mnt/nfs", shared=True).storage.shared is True
    assert _cfg().storage.shared is False
    with pytest.raises(ConfigError, match="storage.shared"):
        _cfg(shared="maybe")


def test_local_ranks_on_two_torchrun_nodes_exit_2_before_training(tmp_path, monkeypatch, capsys):
    """torchrun's GROUP_WORLD_SIZE counts its agents, one per node; the check runs before any rank starts."""
    from data_tools.builders import synthetic
    from xlc.cli import main

    data = synthetic.build(str(tmp_path / "syn"), samples=200, labels=10, features=50)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "r", "data": str(data), "backbone": {"name": "mlp", "hidden": [8]},
                                      "storage": {"path": str(tmp_path / "ckpt")}}))
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        main(["train", str(config), "--local"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: storage.path={tmp_path / 'ckpt'}: a local disk"), err
    assert not (tmp_path / "ckpt").exists()
