"""Ctrl-C (SIGINT) in every phase a user can press it: exit code 130, one line on stderr that says what was
interrupted and what was kept, no traceback, and what was promised kept is there."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_cli import run_dir  # noqa: F401 - the trained tiny GPT run, shared
from tests.cli.test_translate import seq2seq_dir  # noqa: F401 - a trained tiny seq2seq run
from tests.conftest import interruptible

QKV = [sys.executable, "-m", "qkv.cli"]


def _loading_torch(pid: int) -> bool:
    """PyTorch's library is mapped into the process: it is inside ``import torch`` (which goes on for a second)."""
    try:
        return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _cpu_seconds(pid: int) -> float:
    """CPU time the process has used (user + system): a measure of its progress that a loaded machine does not
    stretch, as it stretches wall-clock time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interrupt(
    args: list[str],
    cwd: Path,
    *,
    after: float = 0.0,
    when_stdout: int = 0,
    when_importing: bool = False,
    when_cpu: float = 0.0,
    when_stderr: str | None = None,
    cpu_after_stderr: float = 0.0,
) -> tuple[int, str, str]:
    """Run ``qkv ARGS`` and press Ctrl-C once it has printed ``when_stdout`` bytes to stdout, its stderr matches
    ``when_stderr`` (a progress bar past its first step), it has used ``when_cpu`` seconds of CPU (past its imports
    and loading), ``cpu_after_stderr`` more seconds of CPU since its stderr matched (work begun after that line,
    however long the imports before it took on a loaded machine or a fresh clone compiling its bytecode) and
    ``after`` seconds have passed since; or, ``when_importing``, as soon as it is importing PyTorch. Returns (exit
    code, stdout, stderr). Each phase is waited for by what marks it, not by a guess at how long a loaded machine
    takes to reach it."""
    # one thread: its CPU seconds then count work, not OpenMP threads spinning while a loaded machine runs others
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = interruptible([*QKV, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.set_blocking(proc.stdout.fileno(), False)
    os.set_blocking(proc.stderr.fileno(), False)
    seen, said, started, deadline, matched_at = b"", b"", None, time.monotonic() + 120, None
    while time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stdout.read() or b""
        said += proc.stderr.read() or b""
        if when_importing and _loading_torch(proc.pid):
            break
        ready = len(seen) >= when_stdout
        ready = ready and _cpu_seconds(proc.pid) >= when_cpu
        matched = when_stderr is None or re.search(when_stderr, said.decode(errors="replace")) is not None
        if matched and matched_at is None:
            matched_at = _cpu_seconds(proc.pid)
        ready = ready and matched and _cpu_seconds(proc.pid) - (matched_at or 0.0) >= cpu_after_stderr
        started = started or (time.monotonic() if ready and not when_importing else None)
        if started is not None and time.monotonic() - started >= after:
            break
        time.sleep(0.005 if when_importing else 0.02)
    assert proc.poll() is None, f"qkv {args[0]} finished before it could be interrupted: {proc.stderr.read()!r}"
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # (a no-op once it has exited; never left running when it did not)
    return proc.returncode, (seen + out).decode(errors="replace"), (said + err).decode(errors="replace")


def one_line(err: str) -> str:
    """The one line that is neither a progress bar (tqdm's redraws end in carriage returns) nor a status line of
    the tour (``tour: training ...``)."""
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
    lines = [line for line in lines if line.strip() and not line.startswith(("train:", "tour:"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_ctrl_c_while_torch_is_imported_is_one_line(tmp_path):
    """The first second of any verb is PyTorch's import: Ctrl-C there is handled like anywhere else."""
    rc, _, err = interrupt(["train", "gpt-baby", "--out", str(tmp_path / "r")], tmp_path, when_importing=True)
    assert rc == 130 and one_line(err) == "qkv train: interrupted (Ctrl-C); nothing was written"
    assert not (tmp_path / "r").exists()


# where a Ctrl-C lands in an import: plain code (PyTorch's C++ import of NumPy then cleared the KeyboardInterrupt
# and the command ran on, or died on a half-imported numpy: found 1 s into qkv train); a class being made (Python
# 3.11 wraps a KeyboardInterrupt raised in a descriptor's __set_name__ in a RuntimeError: found 0.3 s into qkv
# attention). The press is a real SIGINT, sent from inside numpy's import of its __config__ module (which every
# release has), so the test waits on no timing.
_PRESS = {
    "in an import": "os.kill(os.getpid(), signal.SIGINT); sum(range(10000))",
    "while a class is made": (
        "class Descriptor:\n"
        "                def __set_name__(self, owner, name): os.kill(os.getpid(), signal.SIGINT); sum(range(10000))\n"
        "            class Owner: attribute = Descriptor()"
    ),
}


@pytest.mark.parametrize("press", list(_PRESS))
def test_ctrl_c_while_c_extensions_are_imported_stops_the_command(tmp_path, press):
    """C extensions' imports do not all let a KeyboardInterrupt through, so the CLI holds a press made while it
    imports and raises it once the imports are done: exit 130, one line, nothing written."""
    script = (
        "import importlib.abc, os, signal, sys\n"
        "class Press(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'numpy.__config__':\n"
        "            sys.meta_path.remove(self)\n"
        f"            {_PRESS[press]}\n"
        "sys.meta_path.insert(0, Press())\n"
        "from qkv.cli import main\n"
        f"sys.exit(main(['train', 'gpt-baby', '--out', {str(tmp_path / 'r')!r}, '--set', 'train.steps=1']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # (as a terminal starts it)
    )  # fmt: skip
    assert done.returncode == 130 and one_line(done.stderr) == "qkv train: interrupted (Ctrl-C); nothing was written"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("flags", "doing"),
    [
        (["--no-stream"], "while generating (--no-stream); nothing was printed"),
        (["--strategy", "beam", "--num-beams", "2"], "while generating (beam search's best is known only at the end)"),
    ],
)
def test_ctrl_c_while_generating_whole_says_nothing_was_printed(run_dir, tmp_path, flags, doing):  # noqa: F811
    rc, out, err = interrupt(
        ["generate", str(run_dir), "--prompt", "Ham.", "--max-new-tokens", "100000000", *flags], tmp_path, when_cpu=5
    )
    assert rc == 130 and one_line(err).startswith(f"qkv generate: interrupted (Ctrl-C) {doing}") and out == ""


def test_ctrl_c_while_translating_a_file_keeps_the_lines_printed(seq2seq_dir, tmp_path):  # noqa: F811
    lines = [f"March {1 + i % 28}, {1900 + i % 200}" for i in range(20_000)]
    (tmp_path / "dates.txt").write_text("\n".join(lines) + "\n")
    rc, out, err = interrupt(
        ["translate", str(seq2seq_dir), "--file", str(tmp_path / "dates.txt")], tmp_path, when_stdout=1
    )
    message = one_line(err)
    printed = int(message.split("; ")[1].split(" of ")[0])
    assert rc == 130 and message.startswith("qkv translate: interrupted (Ctrl-C) while translating; ")
    assert f" of {len(lines)} lines were translated and printed above" in message
    assert 64 <= printed < len(lines) and len(out.splitlines()) == printed


def test_ctrl_c_while_sampling_images(tmp_path):
    from qkv.cli import main

    run = tmp_path / "img"
    assert main(["train", "digits-independent", "--out", str(run), "--no-progress", "--set", "train.steps=2"]) == 0
    rc, _, err = interrupt(["sample", str(run), "--n", "200000", "--png", "s.png"], tmp_path, when_cpu=5)
    assert rc == 130 and not (tmp_path / "s.png").exists()
    assert one_line(err) == "qkv sample: interrupted (Ctrl-C) while sampling 200000 images; nothing was written"


def test_ctrl_c_in_the_quickstart_keeps_the_checkpoint_and_names_the_command_that_resumes(tmp_path):
    args = ["quickstart", "--out", "qs", "--steps", "100000"]
    rc, _, err = interrupt(args, tmp_path, when_stderr=r" [1-9]\d*/100000 ")
    message = one_line(err)
    assert rc == 130 and message.startswith("qkv quickstart: interrupted (Ctrl-C) while training; training stopped")
    assert message.endswith("the same qkv quickstart command resumes it"), message
    assert (tmp_path / "qs" / "checkpoints" / "latest").exists()


def test_ctrl_c_in_training_names_the_command_that_resumes_and_it_does(tmp_path):
    """The hint is pasted as printed (with a step cap appended, as the README's trainings are in the suite)."""
    args = ["train", "gpt-baby", "--out", "runs/b"]
    rc, _, err = interrupt(args, tmp_path, when_stderr=r" [1-9]\d*/2000 ")
    message = one_line(err)
    match = re.fullmatch(
        r"qkv train: interrupted \(Ctrl-C\) while training; training stopped at step (\d+) of 2000; checkpoint "
        r"saved to runs/b/checkpoints/step-\d+; (.*) resumes it",
        message,
    )
    assert rc == 130 and match, message
    step, hint = int(match.group(1)), match.group(2)
    assert hint.endswith("train gpt-baby --out runs/b --resume")
    command = hint.split(" train ", 1)[1]
    proc = subprocess.run(
        [*QKV, "train", *command.split(), "--set", f"train.steps={step + 2}", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f'"steps": {step + 2}' in proc.stdout and '"steps_this_run": 2' in proc.stdout


def test_ctrl_c_in_the_tour_keeps_its_training_in_the_runs_directory_and_the_next_tour_resumes_it(tmp_path):
    from qkv.tour.runs import TOUR_DIR, gpt_run

    runs = tmp_path / "runs"
    args = ["tour", "--runs", str(runs), "--out", str(tmp_path / "t.html")]
    # the tour's GPT trains for about 7 s of CPU after its line (one thread): 3 s into it is mid-training
    rc, _, err = interrupt(args, tmp_path, when_stderr="tour: training a 2-layer", cpu_after_stderr=3)
    message = one_line(err)
    own = runs / TOUR_DIR / "gpt"
    assert rc == 130 and message.startswith("qkv tour: interrupted (Ctrl-C) while making the tour; training stopped")
    assert f"checkpoint saved to {own}" in message and "/tmp/qkv-tour" not in err and not (tmp_path / "t.html").exists()
    assert (own / "checkpoints" / "latest").exists() and gpt_run(runs, train=False) is None  # unfinished: not read
    assert gpt_run(runs) == own  # the next tour carries on from the checkpoint
    metrics = json.loads((own / "metrics.json").read_text())
    assert metrics["steps"] == 300 and 0 < metrics["steps_this_run"] < 300


def test_a_ctrl_c_wrapped_in_another_exception_is_still_a_ctrl_c(monkeypatch, capsys):
    """After the imports, a Ctrl-C can still arrive wrapped (a lazy import making a class, Python 3.11): main() finds
    the KeyboardInterrupt among the causes. Any other exception stays a bug with its traceback."""
    import qkv.cli.configs
    from qkv.cli import main

    def wrapped(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__ on 'cached_property' instance") from exc

    monkeypatch.setattr(qkv.cli.configs, "run", wrapped)
    assert main(["configs"]) == 130
    assert capsys.readouterr().err == "qkv configs: interrupted (Ctrl-C); nothing was written\n"

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(qkv.cli.configs, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["configs"])
