"""The explorer in a real JupyterLab: a server started offline on a free port (its settings and runtime files in a
temporary directory), a notebook opened in headless Chromium, a cell run with Shift+Enter. The output is the live
anywidget (a widget view, not the HTML fallback), it draws exactly the weights the kernel captured, and nothing is
requested from outside the machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.browser import chromium, open_page

pytest.importorskip("jupyterlab")
pytest.importorskip("anywidget")

CELL = """import json, torch, qkv
from qkv.models import GPT, GPTConfig
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=20, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=2)).eval()
ids = torch.randint(0, 20, (1, 6))
with torch.no_grad(), qkv.capture_attention(model) as cap:
    model(ids)
print(json.dumps([cap.weights(layer)[0].tolist() for layer in cap.layers]))
qkv.show(cap, list("abcdef"), title="in JupyterLab")"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free local port, serving ``tmp_path``; stopped (with its kernels) afterwards."""
    port, home = _free_port(), tmp_path / "jupyter"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTER_DATA_DIR": str(home / "data")}  # fmt: skip
    env.pop("PYTEST_XDIST_WORKER", None)
    (home / "settings" / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    # no "get notified about Jupyter news?" prompt (it would fetch news from the internet)
    (home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.token=",
               "--ServerApp.password=", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.ip=127.0.0.1"]  # fmt: skip
    if hasattr(os, "getuid") and os.getuid() == 0:
        command.append("--allow-root")
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_the_widget_runs_in_jupyterlab_offline_and_draws_the_captured_weights(jupyterlab, tmp_path):
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                           "source": CELL}], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                           "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}  # fmt: skip
    (tmp_path / "probe.ipynb").write_text(json.dumps(notebook))
    with chromium() as browser:
        watched = open_page(browser, f"{jupyterlab}/lab/tree/probe.ipynb", 1300, 1000)
        page = watched.page
        page.wait_for_selector(".jp-Notebook .jp-Cell .jp-InputArea-editor", timeout=90_000)
        page.wait_for_function("document.body.innerText.includes('| Idle')", timeout=90_000)  # the kernel is up
        page.click(".jp-Cell .jp-InputArea-editor")
        page.keyboard.press("Shift+Enter")
        host = "[...document.querySelectorAll('.jp-OutputArea-output *')].find(e => e.shadowRoot && e.qkv)"
        page.wait_for_function(f"(() => {{ const h = {host}; return h && h.qkv.draws >= 1; }})()", timeout=90_000)
        printed = page.inner_text(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']")
        # the anywidget view (a Lumino widget), not the inlined HTML fallback (a div.qkv-explorer in rendered HTML)
        widget = page.evaluate(f"(() => {{ const h = {host}; return [h.classList.contains('lm-Widget') && "
                               f"!h.closest('.jp-RenderedHTMLCommon'), h.shadowRoot.getElementById('title')"
                               f".textContent]; }})()")  # fmt: skip
        drawn = page.evaluate(f"""() => {{ const q = ({host}).qkv, s = q.state, out = [];
            for (let l = 0; l < 2; l++){{ const layer = []; out.push(layer);
              for (let h = 0; h < 2; h++){{ const head = []; layer.push(head);
                for (let i = 0; i < 6; i++){{ Object.assign(s, {{view: "qk", layer: l, heads: new Set([h]),
                  queries: new Set([i])}}); q.draw(); head.push(q.drawn.heads[0].weights); }} }} }}
            return out; }}""")
    assert widget == [True, "qkv · in JupyterLab"]
    assert drawn == json.loads(printed)  # float32 for float32: what the kernel captured
    assert watched.leaving(local=jupyterlab) == [], watched.leaving(local=jupyterlab)
