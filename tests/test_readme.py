"""Every command of the README, in README order, pasted as written into bash; and the commands the CLI itself
prints as hints. A command a user copies from the docs must work.

The default suite runs each command as written with caps *appended* so it stays quick: trainings get a few steps
(``--set train.steps=2 ...``, later ``--set`` values win), ``qkv quickstart`` ``--steps 2``, ``qkv bench`` the
smallest sizes, ``qkv sample`` two images, and the benchmark scripts are compiled only (running them is the
bench). The ``slow`` job runs every command exactly as written (``bash scripts/test.sh --slow``), and every
benchmark script with small arguments, so none rots unnoticed. Neither runs the test command itself (that is
``.ci/run``, checked to be the same text).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qkv.data.mnist import is_mnist_directory
from tests.data.test_mnist import MNIST

ROOT = Path(__file__).parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
SETUP = "bash scripts/setup.sh && "
TEST_COMMAND = "bash scripts/setup.sh && bash scripts/test.sh"
TRAIN = re.compile(r"(^|\s)(qkv|-m qkv\.cli) train ")
SEQ2SEQ_CONFIG = re.compile(r"configs/(dates|numbers)-")
SAMPLE = re.compile(r"(^|\s)qkv sample ")  # the command, not `--strategy sample`


def readme_commands() -> list[str]:
    """The commands of the README's ```bash blocks, in order (continuation lines joined); the MNIST ones only where
    MNIST's files are (tests.data.test_mnist.MNIST, linked as the sandbox's data/mnist: a fresh clone has none)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append(command.strip())
    return [c for c in commands if "mnist" not in c.split("  #")[0] or is_mnist_directory(MNIST)]


def capped(command: str) -> str | None:
    """How the default suite runs ``command``: as written, with caps appended; None = not run (compiled)."""
    code = command.split("  #", 1)[0].strip()  # caps go before a trailing comment, not into it
    if code.startswith(SETUP):  # the environment running this test is what setup.sh made
        code = code[len(SETUP) :]
    if code.startswith("python benchmarks/"):
        return f"python -m py_compile {code.split()[1]}"
    if TRAIN.search(code):
        steps = 4 if "--resume" in code else 2
        caps = [f"train.steps={steps}", "train.eval_iters=1", "train.eval_interval=2", "train.checkpoint_interval=2"]
        if SEQ2SEQ_CONFIG.search(code):
            caps += ["data.train_size=64", "data.eval_size=4"]
        return code + "".join(f" --set {cap}" for cap in caps)
    if " quickstart" in code:
        return code + " --steps 2 --max-new-tokens 20 --no-progress"
    if " bench " in code:
        return code + " --sizes 64 --long 128 --window 16 --repeats 1"
    if SAMPLE.search(code):  # each image is one forward per pixel (784 on MNIST): two are enough to check the command
        return code + " --n 2"
    return code


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A directory that looks like the repository (configs, scripts, docs, the README, the environment) where the
    commands can write runs/ and their outputs without touching the checkout."""
    return repository_copy(tmp_path_factory.mktemp("readme"))


def repository_copy(work: Path, linked: tuple[str, ...] = ("docs",)) -> Path:
    """``work`` made to look like the repository: ``linked`` and the read-only parts linked to the checkout, the
    benchmarks and examples copied (they write next to themselves)."""
    for name in ("configs", "scripts", *linked, "README.md", ".venv", "src", "pyproject.toml", "LICENSE"):
        (work / name).symlink_to(ROOT / name)
    if is_mnist_directory(MNIST):  # where the MNIST configs look by default
        (work / "data").mkdir()
        (work / "data" / "mnist").symlink_to(MNIST.resolve())
    shutil.copytree(ROOT / "benchmarks", work / "benchmarks", ignore=shutil.ignore_patterns("results"))
    # a copy: a notebook's kernel runs in its directory, and ../runs must be the sandbox's, not the checkout's
    shutil.copytree(ROOT / "examples", work / "examples")
    for name in {"docs"} - set(linked):  # (benchmarks draw figures into docs/)
        shutil.copytree(ROOT / name, work / name)
    return work


def run_in(sandbox: Path, command: str, timeout: float, tmp: Path | None = None) -> subprocess.CompletedProcess:
    """``command`` in bash in ``sandbox``; its temporary files under ``tmp`` when given (TMPDIR)."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(
        ["bash", "-c", command], cwd=sandbox, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"`{command}` failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    commands = readme_commands()
    assert commands[0].startswith("bash scripts/setup.sh && .venv/bin/qkv quickstart")
    assert commands[1].split("  #")[0].strip() == TEST_COMMAND
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


@pytest.mark.long
def test_every_readme_command_and_cli_hint_works_as_written(sandbox):
    commands = [c for c in readme_commands() if c.split("  #")[0].strip() != TEST_COMMAND]
    assert len(commands) >= 15, commands
    printed = {}
    for command in commands:
        printed[command] = run_in(sandbox, capped(command), timeout=300).stdout
    # the hint the quickstart closes with, and the one an empty text gets, pasted as printed
    quickstart_out = printed[commands[0]]
    hint = re.search(r"^more text: (.*)$", quickstart_out, re.M).group(1)
    assert hint.startswith(".venv/bin/qkv generate runs/quickstart --prompt $'Ham.\\n'"), hint
    generated = run_in(sandbox, hint + " --max-new-tokens 20", timeout=120).stdout
    assert generated.startswith("Ham.\n")
    refused = subprocess.run(
        [str(VENV_BIN / "qkv"), "attention", "runs/quickstart", ""], cwd=sandbox, capture_output=True, text=True
    )
    hint = re.search(r"e\.g\. (qkv attention .*)$", refused.stderr.strip()).group(1)
    run_in(sandbox, hint, timeout=120)
    refused = subprocess.run(
        [str(VENV_BIN / "qkv"), "heads", "runs/quickstart", ""], cwd=sandbox, capture_output=True, text=True
    )
    hint = re.search(r"e\.g\. (qkv heads .*)$", refused.stderr.strip()).group(1)
    assert "previous-token score per head" in run_in(sandbox, hint, timeout=120).stdout
    # what the commands promised to write is there
    for path in (
        "runs/baby/metrics.json",
        "data/plays/manifest.json",
        "runs/plays/metrics.json",
        "vectors.npy",
        "align-2.png",
        "explore.html",
        "page.html",
        "head.png",
        "heads.html",
        "runs/digits-pixelcnn/metrics.json",
        "digits.png",
        "field.html",
        "tour.html",
        "runs/notebooks/01-first-look.ipynb",
        "runs/notebooks/01-first-look.html",
    ):
        assert (sandbox / path).exists(), path


@pytest.mark.slow
def test_every_readme_command_works_exactly_as_written(sandbox):
    """The slow job: no caps (full trainings, the quickstart, the attention bench); setup.sh runs in the checkout."""
    for command in readme_commands():
        if command.split("  #")[0].strip() == TEST_COMMAND or command.startswith("python benchmarks/"):
            continue  # the test suite itself (.ci/run), and the benchmarks, which are the bench job
        if command.startswith(SETUP):
            run_in(ROOT, SETUP.rstrip(" &"), timeout=900)
            command = command[len(SETUP) :]
        run_in(sandbox, command, timeout=1800)


# each benchmark script's arguments for a small run: the slow job runs every README benchmark command with them
# appended (later arguments win), so a script that a change broke fails there, not the next time someone benchmarks
BENCHMARK_SMALL = {
    "attention.py": "--quick",
    "data.py": "--mb 2 --slice-mb 1",
    "decoding.py": "--train-steps 20",
    "generate.py": "--new-tokens 20 --repeats 1",
    "heads.py": "",
    "hooks.py": "--rounds 1 --repeats 1",
    "images.py": "--steps 5 --samples 2",
    "precision.py": "--new-tokens 4 --train-steps 10",
    "pretrained.py": "",
    "seq2seq.py": "--tasks dates --models none transformer --set train.steps=5 --set train.eval_interval=5",
    "train.py": "--seeds 1 --steps 5 --speed-iters 2 --rounds 1",
}
# MNIST's mode: one model, seconds of training (the evaluation still reads all 10,000 test images)
MNIST_SMALL = f"--mnist {MNIST.resolve()} --models made --minutes 0.05 --samples 1"


def benchmark_commands() -> list[tuple[str, str]]:
    """``(script, command)`` for each README benchmark command, as the slow job runs it (small arguments added)."""
    out = []
    for command in readme_commands():
        code = command.split("  #", 1)[0].strip()
        if code.startswith("python benchmarks/"):
            script = code.split()[1].removeprefix("benchmarks/")
            small = MNIST_SMALL if "--mnist" in code else BENCHMARK_SMALL[script]
            out.append((script, f"{code} {small}".strip()))
    return out


def test_every_benchmark_script_has_a_small_form():
    """A benchmark script the README names and the table above misses would never be run by the slow job."""
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py") if "def main(" in p.read_text(encoding="utf-8")}
    named = {script for script, _ in benchmark_commands()}
    assert named <= set(BENCHMARK_SMALL) and scripts - {"images_mnist.py"} == set(BENCHMARK_SMALL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "command"),
    benchmark_commands(),
    ids=[script + (" --mnist" if "--mnist" in command else "") for script, command in benchmark_commands()],
)
def test_every_benchmark_runs_end_to_end_in_a_small_form(tmp_path, script, command):
    """Each README benchmark command with small arguments, in a copy of the repository whose docs/ is a copy too
    (hooks.py checks out its baseline with git, so it runs in a clone), writing its table and figures there. Its
    figures mean nothing at this size."""
    if script == "train.py" and not (ROOT.parent / "nanoGPT" / "train.py").is_file():
        pytest.skip("the nanoGPT comparison needs a checkout of karpathy/nanoGPT at ../nanoGPT")
    where = tmp_path / "repository"
    if script == "hooks.py":
        subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
        shutil.copytree(ROOT / "benchmarks", where / "benchmarks", dirs_exist_ok=True)  # (the tree under test)
    else:
        where.mkdir()
        repository_copy(where, linked=())
        command = command.replace("../nanoGPT", str(ROOT.parent / "nanoGPT"))
    scratch = tmp_path / "tmp"  # (the MNIST benchmark keeps its runs in a temporary directory: here, not /tmp)
    scratch.mkdir()
    proc = run_in(where, command, timeout=1500, tmp=scratch)
    written = re.findall(r"written to (\S+\.md)", proc.stdout + proc.stderr)
    assert written, f"`{command}` wrote no table:\n{proc.stdout[-1500:]}"
    table = Path(written[-1]) if Path(written[-1]).is_absolute() else where / written[-1]
    assert table.resolve().is_relative_to(where.resolve()), table  # never the checkout's published results
    assert "| experiment |" in table.read_text(encoding="utf-8") or "| model |" in table.read_text(encoding="utf-8")


def test_the_readmes_attention_examples_run_as_written():
    """The ```python blocks of the attention sections (the first two, which build on each other) run in order and
    their functions give the dense computation's numbers."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    namespace: dict = {}
    for block in blocks[:2]:
        exec(compile(block, "README.md", "exec"), namespace)
    import torch

    q, k, v, out = namespace["q"], namespace["k"], namespace["v"], namespace["out"]
    dense = namespace["blocks"].dense()
    scores = q @ k.repeat_interleave(4, 1).transpose(-2, -1) / 8
    scores = (30.0 * torch.tanh(scores / 30.0)).masked_fill(~dense, float("-inf"))
    want = torch.softmax(scores, -1) @ v.repeat_interleave(4, 1)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_the_readmes_intervention_example_runs_as_written():
    """The ```python block that opens with qkv.intervene, run on a small GPT as `model` and `ids`."""
    import torch

    import qkv

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    (block,) = [b for b in blocks if b.startswith("with qkv.intervene")]
    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=3, num_heads=4, embed_dim=16))
    namespace = {"qkv": qkv, "model": model.eval(), "ids": torch.randint(0, 16, (1, 6))}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["rollout"].shape == namespace["flow"].shape == (1, 6, 6)
    assert not torch.equal(namespace["ablated"].logits, model(namespace["ids"]).logits)


def test_the_readmes_notebook_example_runs_as_written(tmp_path, monkeypatch):
    """The ```python block that opens the notebook section, with the names it uses made small and real."""
    import torch

    import qkv
    from qkv.models import GPT, GPTConfig, Transformer, TransformerConfig

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    (block,) = [b for b in blocks if "qkv.show(" in b]
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=16, max_seq_len=8, num_layers=2, num_heads=2, embed_dim=16)).eval()
    ids = torch.randint(0, 16, (1, 6))
    with torch.no_grad(), qkv.capture_attention(gpt) as cap, qkv.record(gpt) as cache:
        gpt(ids)
    translator = Transformer(TransformerConfig(src_vocab_size=12, tgt_vocab_size=12, embed_dim=16, num_heads=2,
                                               ffn_dim=32)).eval()  # fmt: skip

    class Chars:  # a tokenizer: decode([id]) labels a token
        def decode(self, ids: list[int]) -> str:
            return "abcdefghijklmnop"[ids[0]]

    namespace = {"cap": cap, "cache": cache, "tokens": list("abcdef"), "translator": translator, "gpt": gpt, "ids": ids,
                 "src_ids": torch.randint(3, 12, (1, 5)), "tgt_ids": torch.randint(3, 12, (1, 4)), "chars": Chars(),
                 "scores": qkv.analysis.head_importance(gpt, ids)}  # fmt: skip
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), namespace)
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert '"headScores": {"name": "head score"' in page and '"tokens": ["' in page
