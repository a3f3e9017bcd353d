"""A finished run's report, logged to MLflow by the driver: plots from its metric history, and the model.

curves.png (loss and ranking metrics over steps), frequency_buckets.png (recall@k of test labels grouped
by their training frequency: head vs tail), collapse.png (NC metrics over evaluations, when logged),
label_frequency.png (the dataset's head/tail), and the final weights under `model/` (fp32, no optimiser
state: `xlc.train.checkpoint.export_weights`; the Ray checkpoints stay the resume mechanism).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from xlc import data as xdata
from xlc import tracking
from xlc.plots import Series, plot_buckets, plot_collapse, plot_curves, plot_label_frequency
from xlc.train.checkpoint import export_weights


def _history(client, run_id: str, key: str) -> Series:
    points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return [s for s, _ in points], [v for _, v in points]


def log_run_report(uri: str, run_id: str, data_dir: str, checkpoint_dir: str | Path | None) -> None:
    """Make the plots of a finished run from its MLflow metric history and log them with the model."""
    client = tracking.client(uri)
    logger = tracking.RunLogger(uri, run_id)
    latest = client.get_run(run_id).data.metrics
    ranking = [k for k in ("p_at_1", "p_at_5", "ndcg_at_5", "psp_at_5") if k in latest]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        made = [
            plot_curves(_history(client, run_id, "loss"),
                        {tracking.metric_name(k): _history(client, run_id, k) for k in ranking}, out / "curves.png"),
            plot_buckets(latest, out / "frequency_buckets.png"),
            plot_collapse({k.removeprefix("nc/"): _history(client, run_id, k) for k in sorted(latest)
                           if k.startswith("nc/")}, out / "collapse.png"),
            plot_label_frequency(xdata.label_counts(data_dir), out / "label_frequency.png",
                                 xdata.open_location(data_dir).name),
        ]
        for path in made:
            if path is not None:
                logger.artifact(path, "plots")
        if checkpoint_dir is not None:
            client.log_artifacts(run_id, str(export_weights(checkpoint_dir, out / "model")), "model")
