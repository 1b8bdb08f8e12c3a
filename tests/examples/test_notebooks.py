"""The notebooks in examples/ run from top to bottom in a Python kernel of this environment (nbclient), with smaller
parameters than a person would use (injected after the cell tagged ``parameters``, as papermill does), and are
kept in the repository without outputs. Their inline explorers carry the widget and the static fallback; the HTML
export (nbconvert) of an executed notebook opens offline in Chromium with every explorer and figure drawn."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.browser import chromium, open_page

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).parents[2] / "examples"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> Path:
    """The quickstart's GPT, trained briefly (the notebooks would train 1,500 steps where none exists)."""
    from qkv.cli import main

    run = tmp_path_factory.mktemp("runs") / "quickstart"
    assert main(["quickstart", "--out", str(run), "--steps", "40", "--max-new-tokens", "20", "--no-progress"]) == 0
    return run


def _parameters(name: str, tmp_path: Path, quickstart_run: Path) -> dict:
    return {
        "01-first-look": {"RUN": str(quickstart_run), "STEPS": 40},
        "02-the-texts-examples": {"RUNS": str(tmp_path / "runs"), "TRAIN": False},
        "02-the-texts-examples-ko": {"RUNS": str(tmp_path / "runs"), "TRAIN": False},
        "03-interventions": {"RUN": str(quickstart_run), "STEPS": 40},
        "04-image-models": {"RUNS": str(tmp_path / "runs"), "STEPS": 30},
    }[name]


def execute(name: str, tmp_path: Path, quickstart_run: Path):
    """Run examples/NAME.ipynb in ``tmp_path`` (its working directory) with the test's parameters."""
    path = EXAMPLES / f"{name}.ipynb"
    book = nbformat.read(path, as_version=4)
    tagged = [i for i, cell in enumerate(book.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    values = _parameters(name, tmp_path, quickstart_run)
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in values.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    book.cells.insert(tagged[0] + 1, injected)
    # widget state is not saved in the notebook, as JupyterLab saves it by default: nbconvert then exports each
    # output's text/html (with state saved, it draws widgets with a widget manager fetched from a CDN)
    client = nbclient.NotebookClient(book, timeout=600, kernel_name="python3", store_widget_state=False,
                                     resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    # one thread per kernel, as every test process has (tests/conftest.py): two xdist workers and their kernels
    # would otherwise fight over 2 cores, each torch spinning up threads for the other's
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1"})
    return book


def test_the_notebooks_are_kept_without_outputs():
    names = sorted(p.stem for p in EXAMPLES.glob("*.ipynb"))
    assert names == ["01-first-look", "02-the-texts-examples", "02-the-texts-examples-ko", "03-interventions",
                     "04-image-models"]  # fmt: skip
    for name in names:
        book = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
        nbformat.validate(book)
        code = [cell for cell in book.cells if cell.cell_type == "code"]
        assert all(cell.outputs == [] and cell.execution_count is None for cell in code), f"{name} has outputs"


def _explorers(book) -> list[dict]:
    return [out["data"] for cell in book.cells if cell.cell_type == "code" for out in cell.outputs
            if "data" in out and "qkv-explorer" in out["data"].get("text/html", "")]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "explorers"),
    [("01-first-look", 4), ("02-the-texts-examples", 1), ("03-interventions", 2), ("04-image-models", 2),
     # the English notebook translated (its code is the same): the slow job runs it, the default suite its original
     pytest.param("02-the-texts-examples-ko", 1, marks=pytest.mark.slow)],
)  # fmt: skip
def test_notebook_runs_and_shows_its_explorers_inline(name, explorers, tmp_path, quickstart_run):
    book = execute(name, tmp_path, quickstart_run)
    errors = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]  # fmt: skip
    assert errors == []
    shown = _explorers(book)
    assert len(shown) == explorers
    for data in shown:  # the live widget where a widget manager runs, the same module inlined everywhere else
        assert WIDGET_VIEW in data and data[WIDGET_VIEW]["model_id"]
        assert "<img" in data["text/html"] or "needs JavaScript" in data["text/html"]  # seen without scripts too
    if name == "02-the-texts-examples-ko":
        assert '"lang": "ko"' in shown[0]["text/html"]
    if name == "01-first-look":
        assert (tmp_path / "first-look.html").stat().st_size > 10_000


def test_the_html_export_draws_every_explorer_offline(tmp_path, quickstart_run):
    """nbconvert's HTML (no widget state is saved, so it falls back to each output's text/html): opened offline in
    Chromium, every explorer and picture draws, nothing is requested from the network and nothing errs."""
    nbconvert = pytest.importorskip("nbconvert")
    book = execute("01-first-look", tmp_path, quickstart_run)
    body, _ = nbconvert.HTMLExporter(**OFFLINE_EXPORT).from_notebook_node(book)
    path = tmp_path / "first-look-export.html"
    path.write_text(body, encoding="utf-8")
    with chromium() as browser:
        watched = open_page(browser, path)
        page = watched.page
        page.wait_for_load_state("load")
        drawn = page.evaluate("[...document.querySelectorAll('.qkv-explorer')].map(e => e.qkv ? e.qkv.draws : 0)")
        titles = page.evaluate("[...document.querySelectorAll('.qkv-explorer')].map(e => "
                               "e.shadowRoot.getElementById('title').textContent)")  # fmt: skip
        images = page.evaluate("[...document.images].map(i => i.complete ? i.naturalWidth : 0)")
    assert len(drawn) == 4 and all(d >= 1 for d in drawn), drawn
    assert titles[1] == "qkv · The cat sat on the mat." and all(w > 0 for w in images)
    assert watched.errors == [] and watched.leaving() == [], (watched.errors, watched.leaving())


# nbconvert's own page loads require.js and MathJax from a CDN by default; with these settings it loads nothing
OFFLINE_EXPORT = json.loads('{"require_js_url": "", "mathjax_url": "", "mermaid_js_url": ""}')
