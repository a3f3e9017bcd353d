"""`xlc ui` in a real headless browser (Debian's `chromium`, driven over the Chrome DevTools protocol): the
runs page of an `xlc compare` experiment shows the compare's run, its method runs nested under it once
expanded, and each method's P@1 as MLflow holds it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import last_json, xlc_ui

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium")
P1 = "metrics.`p_at_1`"  # MLflow's runs-table column id of the metric p_at_1
VIEW = "xlc-p1"  # a shared view: MLflow's runs page opened with ?viewStateShareKey=KEY shows the view stored in
# the experiment tag mlflow.sharedViewState.KEY (plain JSON; its "Share" button writes one), here the P@1 column


class Page:
    """One browser tab over the DevTools protocol: `evaluate` a JavaScript expression, get its JSON value."""

    def __init__(self, ws):
        self._ws, self._id = ws, 0

    async def call(self, method: str, **params) -> dict:
        self._id += 1
        await self._ws.send_json({"id": self._id, "method": method, "params": params})
        while (reply := await self._ws.receive_json()).get("id") != self._id:
            pass  # events
        assert "error" not in reply, reply
        return reply["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 120):
        """The value of `expression` once it is truthy (evaluated every half second)."""
        deadline = time.monotonic() + timeout
        while not (value := await self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"never true: {expression}\n{await self.evaluate('document.body.innerText')}")
            await asyncio.sleep(0.5)
        return value


async def _browse(profile: Path, url: str, steps) -> object:
    """Open `url` in a fresh headless chromium (profile dir `profile`) and return `await steps(page)`."""
    import aiohttp

    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "--window-size=1600,1000", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().count("\n")):  # written once it listens
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            await asyncio.sleep(0.2)
        devtools = f"http://127.0.0.1:{port_file.read_text().split()[0]}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{devtools}/json/list") as reply:
                target = next(t for t in await reply.json() if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Page.navigate", url=url)
                return await steps(page)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the browser and its renderer, GPU and zygote processes
        proc.wait(timeout=30)


def _rows_js(run_ids: list[str]) -> str:
    """JavaScript for {run id: {name, x: the left edge of its name link (nesting indents it), p1: the text of its
    P@1 cell}, or null while the row is not on screen} (the grid renders a row's pinned and scrolled cells in
    separate row elements, hence a query per cell)."""
    return f"""Object.fromEntries({json.dumps(run_ids)}.map(id => {{
        const link = document.querySelector(`.ag-row[row-id="${{id}}"] a[href$="/runs/${{id}}"]`);
        const p1 = document.querySelector(`.ag-row[row-id="${{id}}"] [col-id=${{JSON.stringify({json.dumps(P1)})}}]`);
        return [id, link && {{name: link.innerText, x: link.getBoundingClientRect().left,
                               p1: p1 && p1.innerText.trim()}}];
    }}))"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed; .ci/run's slow stage installs Debian's "
                                               "chromium (apt-get as root, or sudo)")
def test_ui_shows_the_compare_runs_nested_with_their_p1(tmp_path):
    """Two kNN baselines (no Ray, no training: seconds) on a synthetic set where their P@1 differ."""
    from data_tools.builders import synthetic

    data = synthetic.build(str(tmp_path / "syn"), samples=1000, labels=100, features=500, noise_features=32,
                           proto_features_per_label=4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = {"name": "ui", "base": {"name": "x", "data": str(data), "tracking": {"uri": uri, "experiment": "ui"}},
            "methods": [{"name": "knn1", "baseline": "knn", "options": {"k": 1}},
                        {"name": "knn25", "baseline": "knn", "options": {"k": 25}}]}
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(spec))
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    done = subprocess.run([sys.executable, "-m", "xlc.cli", "compare", "compare.yaml", "--json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = last_json(done.stdout)
    parent, methods = summary["parent_run_id"], {r["run_id"]: r for r in summary["runs"]}
    assert len({round(r["metrics"]["p@1"], 3) for r in summary["runs"]}) == 2, summary  # tells rows apart
    mlflow = MlflowClient(uri)
    experiment = mlflow.get_experiment_by_name("ui").experiment_id
    mlflow.set_experiment_tag(experiment, f"mlflow.sharedViewState.{VIEW}", json.dumps({"selectedColumns": [P1]}))

    async def expand_and_read(page: Page) -> dict:
        # the expander: the one button in the Run Name cell of the compare's run
        expander = json.dumps(f'.ag-row[row-id="{parent}"] [col-id="attributes.`Run Name`"] button')
        await page.wait_for(f"document.querySelector({expander}) !== null")
        await page.evaluate(f"document.querySelector({expander}).click()")
        ready = " && ".join(f"rows[{json.dumps(r)}]?.p1" for r in methods)
        return await page.wait_for(f"(() => {{ const rows = {_rows_js([parent, *methods])}; "
                                   f"return rows[{json.dumps(parent)}] && {ready} && rows; }})()")

    with xlc_ui(tmp_path, "--uri", uri) as ui:
        rows = asyncio.run(_browse(tmp_path / "chromium", f"{ui['url']}/#/experiments/{experiment}/runs"
                                   f"?viewStateShareKey={VIEW}", expand_and_read))
    assert rows[parent]["name"] == "ui"
    for run_id, run in methods.items():
        assert rows[run_id]["name"] == f"ui-{run['method']}"
        assert rows[run_id]["x"] > rows[parent]["x"], rows  # indented under the compare's run
        assert float(rows[run_id]["p1"]) == pytest.approx(run["metrics"]["p@1"], abs=1e-3), (run, rows[run_id])
