"""``qkv generate``: continue a prompt with a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

from qkv.cli.common import add_device_option

__all__ = ["add_parser"]


#: the GenerationConfig fields both decoding verbs take as flags (each verb adds its own few)
SHARED_FLAGS = (
    "max_new_tokens",
    "strategy",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "num_beams",
    "length_penalty",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "no_repeat_ngram_size",
    "max_time",
)
GENERATE_FLAGS = (*SHARED_FLAGS, "num_return_sequences", "use_cache", "compile")
#: where ``qkv generate`` defaults differently from the API: a text generator samples, reproducibly
GENERATE_DEFAULTS = {"max_new_tokens": 200, "strategy": "sample", "temperature": 0.8, "seed": 0}


def add_generation_options(p: argparse.ArgumentParser) -> None:
    from qkv.cli.decoding_flags import add_decoding_flags

    add_decoding_flags(p, GENERATE_FLAGS, GENERATE_DEFAULTS)
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop once the new text contains TEXT (kept in the output; repeatable: any of them)",
    )
    p.add_argument(
        "--scores",
        action="store_true",
        help="also print (to stderr) how likely the model finds the new text: total and mean log-probability",
    )
    p.add_argument(
        "--no-stream",
        action="store_true",
        help="print the text when it is complete (default: print each token as it comes; beam search always waits)",
    )


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="continue a prompt with a trained model",
        description="Continue --prompt with a trained qkv model. A prompt longer than the model's context is cut "
        "from the left with a warning; an empty prompt or characters the model never saw are errors.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="a run directory (from qkv train), a checkpoint directory, or a HuggingFace-format directory of a GPT-2, "
        "Llama, Mistral or Qwen2 model (config.json, model.safetensors, tokenizer.json)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the text to continue")
    source.add_argument(
        "--file",
        type=Path,
        help="a UTF-8 file of prompts, one per line (blank lines skipped), continued together in one batch",
    )
    add_generation_options(p)
    add_device_option(p, dtype=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from qkv.cli.common import encode_prompt, non_text_tokens, on_interrupt
    from qkv.cli.decoding_flags import decoding_config
    from qkv.decoding import generate, generate_stream, stop_strings
    from qkv.models.families import CAUSAL_LM
    from qkv.models.protocols import CausalLM
    from qkv.runs import load_model_and_tokenizer

    check_generation_args(args)
    config = decoding_config(args, GENERATE_FLAGS)  # every flag checked before the model loads
    loaded, tokenizer, _ = load_model_and_tokenizer(args.checkpoint, args.device, args.dtype, protocol=CAUSAL_LM)
    model = cast(CausalLM, loaded)  # (checked: a CAUSAL_LM family)
    config = config.replace(suppress_tokens=non_text_tokens(tokenizer))
    if args.file is not None:
        return _generate_file(args, model, tokenizer, config)
    ids = encode_prompt(tokenizer, args.prompt, model.config.max_seq_len)
    if args.stop:
        config = config.replace(stopping_criteria=[stop_strings(args.stop, tokenizer.decode, ids.shape[1])])
    if args.strategy == "beam" or args.no_stream or args.num_return_sequences > 1:
        with on_interrupt(f"generating ({_whole(args)})", kept="nothing was printed"):
            outputs = list(generate(model, ids, config))
        _print_all(args, model, tokenizer, outputs, [ids.shape[1]])
        return 0
    # stream: print each piece as soon as it is chosen; Ctrl-C keeps what was printed
    stream = generate_stream(model, ids, config)
    sys.stdout.write(tokenizer.decode(ids[0].tolist()))
    sys.stdout.flush()
    new = 0
    generated = []  # the new tokens, (1,) each: for --scores
    line: list[int] = []  # tokens since the last printed newline: a piece may change how the ones before it read,
    printed = ""  # so the line is decoded whole each time (work bounded by a line, not by the whole text)
    try:
        for token in stream:
            new += 1
            generated.append(token)
            line.append(int(token[0]))
            text = tokenizer.decode(line)
            if text.startswith(printed):
                sys.stdout.write(text[len(printed) :])
                sys.stdout.flush()
                printed = text
            if printed.endswith("\n"):
                line, printed = [], ""
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stdout.flush()
        raise KeyboardInterrupt(f"{new} new tokens were generated: the text above") from None
    finally:
        stream.close()
    sys.stdout.write("\n")
    _print_scores(args, model, torch.cat([ids, torch.stack(generated, dim=1).cpu()], dim=1), ids.shape[1])
    return 0


def _generate_file(args: argparse.Namespace, model, tokenizer, config) -> int:  # noqa: ANN001
    """Every line of ``--file`` continued in one left-padded batch; printed in order, one block per prompt."""
    from qkv.cli.common import encode_prompt, on_interrupt
    from qkv.data.text import read_text_file
    from qkv.decoding import generate
    from qkv.errors import ConfigError

    # (missing, a directory, not UTF-8 or blank: each named by read_text_file)
    texts = [line for line in read_text_file(args.file).splitlines() if line.strip()]
    if args.stop:
        raise ConfigError("--stop works with --prompt; for a file, each prompt would stop at its own time")
    prompts = [encode_prompt(tokenizer, text, model.config.max_seq_len)[0] for text in texts]
    with on_interrupt(f"generating for {len(prompts)} prompts in one batch", kept="nothing was printed"):
        outputs = generate(model, prompts, config)
    _print_all(args, model, tokenizer, outputs, [len(p) for p in prompts])
    return 0


def _whole(args: argparse.Namespace) -> str:
    """Why the text is printed only when complete."""
    if args.strategy == "beam":
        return "beam search's best is known only at the end"
    return "--no-stream" if args.no_stream else "several sequences are printed when all are complete"


def check_generation_args(args: argparse.Namespace) -> None:
    """What a decoding verb refuses beyond the config's own checks: asking for no new tokens at all (the API
    allows it and returns the prompts; on the command line it is a mistake)."""
    from qkv.errors import ConfigError

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")


def _print_all(args: argparse.Namespace, model, tokenizer, outputs: list, prompt_lens: list[int]) -> None:  # noqa: ANN001
    """Each output (prompt + continuation), under a ``---- i of n ----`` line when there are several."""
    for index, row in enumerate(outputs):
        if len(outputs) > 1:
            print(f"---- {index + 1} of {len(outputs)} ----")
        print(tokenizer.decode(row.tolist()))
        _print_scores(args, model, row[None], prompt_lens[index // args.num_return_sequences])


def _print_scores(args: argparse.Namespace, model, sequences, prompt_len: int) -> None:  # noqa: ANN001
    if args.scores and sequences.shape[1] > prompt_len:
        from qkv.decoding.scores import score_continuation

        sys.stdout.flush()
        print(f"qkv generate: {score_continuation(model, sequences, prompt_len).describe()}", file=sys.stderr)
