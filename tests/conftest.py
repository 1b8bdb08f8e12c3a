"""Shared test helpers: an independent float64 attention oracle built only from PyTorch's own ops."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import tempfile

# torch.compile's on-disk cache (inductor's FX graph cache) keys its kernels without ATEN_CPU_CAPABILITY or the
# thread count (cf. pytorch#184444 for threads): a kernel compiled in the AVX-512 pass and served to the AVX2 pass
# of scripts/test.sh gave wrong tokens, and the reverse aborted. One cache per capability and thread setting.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(
        tempfile.gettempdir(),
        f"qkv-tests-inductor-{getpass.getuser()}-{os.environ.get('ATEN_CPU_CAPABILITY', 'default')}-"
        f"{'xdist' if os.environ.get('PYTEST_XDIST_WORKER') else 'serial'}",
    ),
)

import pytest
import torch
from hypothesis import settings

# pytest-xdist runs one worker per core: one torch thread each keeps them from fighting over the cores
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Tolerances scale with the magnitude of what they compare (torch.testing: |a - b| <= atol + rtol * |b|): fp32
# rounding and kernel-dependent summation orders (AVX2 vs AVX-512, GPU) move a gradient of 35 by ~1e-5, which an
# absolute-only bound calls a failure on one CPU and a pass on another.
FP32 = {"rtol": 1e-5, "atol": 1e-5}  # fp32 results against a float64 oracle or another fp32 computation
FP32_TIGHT = {"rtol": 1e-5, "atol": 1e-6}  # values in [0, 1] (attention weights); fp32 against the same ops in fp32
FP64 = {"rtol": 1e-10, "atol": 1e-10}  # float64 against float64

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("slow", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def plain_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ · scale + bias) v in float64 with ``torch.softmax``; fully masked rows -> zeros.

    Written from the definition, independently of qkv: GQA by ``repeat_interleave``, masking with ``-inf``.
    """
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if scores is None:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        scores = q @ k.transpose(-2, -1) * scale
    scores = scores.double()
    if bias is not None:
        scores = scores + bias.double()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # a row of all -inf is NaN in torch.softmax; ours must be 0
    return weights @ v, weights


def page_data(path) -> dict:
    """The data an attention page (``qkv.visualization.html``) embeds, parsed back from the file."""
    import json
    import re

    text = path.read_text(encoding="utf-8")
    found = re.search(r'^mount\(document\.getElementById\("qkv-\w+"\), (\{.*\})\);$', text, re.M)
    return json.loads(found.group(1).replace("<\\/", "</"))


def stored_weights(kind: dict) -> torch.Tensor:
    """A kind of attention's weights as an explorer page stores them (float32 or float16, base64): ``(layers,
    heads, q, k)``."""
    import base64

    import numpy as np

    stored = kind["weights"]
    dtype = {"float32": "<f4", "float16": "<f2"}[stored["encoding"]]
    values = np.frombuffer(base64.b64decode(stored["data"]), dtype).astype(np.float32)
    return torch.from_numpy(values.copy()).reshape(kind["layers"], kind["heads"], len(kind["queryTokens"]), -1)


def band(q_len: int, k_len: int, causal: bool, window) -> torch.Tensor:
    """The causal/window mask from its definition: -left <= j - off - i <= right, where an int window w sees the w
    keys ending at the query, (left, right) = (w - 1, 0)."""
    off = k_len - q_len
    i = torch.arange(q_len).unsqueeze(1)
    j = torch.arange(k_len).unsqueeze(0)
    rel = j - off - i
    allowed = torch.ones(q_len, k_len, dtype=torch.bool)
    if window is not None:
        left, right = (window - 1, 0) if isinstance(window, int) else window
        allowed &= (rel >= -left) & (rel <= right)
    if causal:
        allowed &= rel <= 0
    return allowed


@pytest.fixture
def bf16_allowed(monkeypatch) -> None:
    """Lets qkv place models in bf16 on any CPU, as on one with native bf16 units (where it is allowed), so the bf16
    numerics are tested on AVX2-only machines too (there qkv refuses bf16 as emulated and slow)."""
    import qkv.devices

    monkeypatch.setattr(qkv.devices, "native_cpu_bf16", lambda: True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``long`` go first: pytest-xdist hands out work in collection order, so the README's five-minute
    test starts at once on one worker while the other works through the rest (collected last, it ran alone for
    minutes at the end of the run). Tests marked ``gpu`` run wherever CUDA is available and are skipped (with the
    reason) elsewhere."""
    items.sort(key=lambda item: "long" not in item.keywords)  # stable: the order is otherwise kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (PyTorch sees none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def interruptible(command: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` for a process the test will press Ctrl-C in. A process started in the background by a
    non-interactive shell (a CI runner, ``cmd &``) inherits SIGINT *ignored*, and Python then keeps ignoring it; the
    child gets the default handling back, as in a terminal."""
    return subprocess.Popen(command, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)
