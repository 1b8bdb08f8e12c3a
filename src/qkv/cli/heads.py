"""``qkv heads``: one score per attention head of a model on a text, as a table and a layer × head grid."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

from qkv.cli.common import add_device_option

__all__ = ["add_parser", "head_scores"]

METRICS = ("ablation", "attribution", "logit-attribution", "induction", "previous-token")
HINT = "give some text, e.g. qkv heads runs/quickstart 'To be, or not to be' --metric previous-token"


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="score every attention head on a text (ablation, attributions, induction, previous-token)",
        description="Score each head of MODEL on TEXT and print a layer x head table (--png a grid, --html the "
        "explorer page): "
        "'ablation' = the change in next-token loss when the head is zeroed (causal LMs); 'attribution' = its "
        "gradient estimate from one backward pass (attribution patching); 'logit-attribution' = what the head's "
        "output adds directly to the next token's logit, averaged over positions; 'induction' = attention "
        "from the second copy of TEXT repeated twice to the token after the first occurrence; 'previous-token' = "
        "attention to the token before.",
    )
    p.add_argument("model", help="qkv checkpoint, HF-format directory, or 'minilm'")
    p.add_argument("text", help="the text to score the heads on")
    p.add_argument("--metric", choices=METRICS, default="ablation", help="what to score (default: ablation)")
    p.add_argument("--png", type=Path, help="write the layer x head grid here (.png, .svg or .pdf)")
    p.add_argument(
        "--html", type=Path, help="write the explorer page here (.html): the score grid, click a head to see it"
    )
    add_device_option(p, dtype=True)
    p.set_defaults(run=run)


def head_scores(model, ids, metric: str):  # noqa: ANN001, ANN201
    """``(layers, heads)`` scores of ``metric`` for ``ids (1, n)``."""
    import torch

    from qkv.analysis import direct_logit_attribution, head_importance, induction_scores, previous_token_scores
    from qkv.errors import ConfigError
    from qkv.models.families import CAUSAL_LM, family_of

    if metric == "previous-token":
        return previous_token_scores(model, ids)
    if metric == "induction":
        half = ids[:, : max(2, model.config.max_seq_len // 2)]
        return induction_scores(model, torch.cat([half, half], dim=1))
    family = family_of(model)
    if family is None or family.protocol != CAUSAL_LM:
        raise ConfigError(f"--metric {metric} explains the next token: it needs a causal language model (GPT, Llama)")
    if ids.shape[1] < 2:
        raise ConfigError(f"--metric {metric} needs a text of at least 2 tokens")
    if metric == "logit-attribution":
        return direct_logit_attribution(model, ids).mean(dim=(2, 3)).double()
    return head_importance(model, ids, method="exact" if metric == "ablation" else "attribution")


def run(args: argparse.Namespace) -> int:
    from qkv.cli.attention import attention_report
    from qkv.cli.common import HTML_SUFFIXES, check_output_files, encode_prompt
    from qkv.devices import model_device
    from qkv.errors import ConfigError
    from qkv.models.protocols import CausalLM
    from qkv.runs import load_model_and_tokenizer
    from qkv.visualization.grid import IMAGE_SUFFIXES, plot_head_scores

    if not args.text:
        raise ConfigError(f"TEXT is empty: {HINT}")
    check_output_files({"png": IMAGE_SUFFIXES, "html": HTML_SUFFIXES}, png=args.png, html=args.html)
    model, tokenizer, pretrained = load_model_and_tokenizer(args.model, args.device, args.dtype)
    if pretrained:
        ids = tokenizer.batch([args.text])[0]
    else:
        ids = encode_prompt(tokenizer, args.text, cast(CausalLM, model).config.max_seq_len, HINT)
    scores = head_scores(model, ids.to(model_device(model)), args.metric)
    print(f"{args.metric} score per head (rows: layers, columns: heads)")
    print("layer " + " ".join(f"{h:>8}" for h in range(scores.shape[1])))
    for layer, row in enumerate(scores.tolist()):
        print(f"{layer:>5} " + " ".join(f"{v:8.4f}" for v in row))
    title = f"{Path(args.model).name}: {args.metric} per head"
    if args.png is not None:
        print(f"written: {plot_head_scores(scores, args.png, title=title)}")
    if args.html is not None:
        for path in attention_report(
            model, tokenizer, args.text, None, args.html, name=Path(args.model).name, pretrained=pretrained,
            token_ids=None if pretrained else ids, head_scores=(args.metric, scores),
        ):  # fmt: skip
            print(f"written: {path}")
    return 0
