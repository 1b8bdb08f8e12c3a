"""The core stands alone: ``import qkv.attention`` loads PyTorch and the attention core, nothing else of the
stack; ``import qkv`` imports names only when they are used."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("matplotlib", "tokenizers", "safetensors", "transformers", "sacrebleu", "qkv.training", "qkv.pretrained")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(result.stdout.split())


def test_the_attention_core_imports_nothing_else():
    assert loaded_after("import qkv.attention; qkv.attention.attend") == set()
    assert loaded_after("import qkv") == set()


def test_public_names_arrive_when_used():
    assert loaded_after("import qkv; qkv.generate") == set()  # decoding needs no tokenizer or checkpoint code
    assert "safetensors" in loaded_after("import qkv; qkv.load_pretrained")
    code = "import qkv; assert qkv.models.GPT and qkv.errors.ShapeError and 'attend' in dir(qkv)"
    assert loaded_after(code) == set()


def test_the_cli_entry_point_loads_nothing_until_it_runs():
    """``qkv`` must be inside its Ctrl-C handling before PyTorch's second-long import starts."""
    code = "import sys\nfrom qkv.cli import main\nprint('torch' in sys.modules, 'qkv.cli.common' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_the_tour_loads_runs_through_the_library_not_the_cli():
    code = "import sys\nimport qkv.tour.models, qkv.tour.seq2seq, qkv.tour.runs\nprint('qkv.cli' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"


def test_the_layer_contract_holds():
    """import-linter's check of pyproject.toml's contracts: no import (at module level or inside a function) runs up
    a layer, so there is no cycle between the packages; the attention core and the models import only what
    DESIGN.md allows them."""
    from pathlib import Path

    root = Path(__file__).parent.parent
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout[-3000:]
