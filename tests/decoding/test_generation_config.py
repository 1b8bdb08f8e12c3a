"""One GenerationConfig for every decoding entry point: validated when made, overridable per call, the source of
the CLI's flags; user logits processors and stopping criteria in HF's shapes (checked against HF's generate); a
``return_dict`` result whose scores are what each token was chosen from."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

import qkv
from qkv.decoding.config import FIELDS
from qkv.errors import ConfigError, ShapeError

transformers = pytest.importorskip("transformers")


PROMPT = torch.tensor([[4, 29, 31, 7, 2]])


def test_the_config_is_frozen_and_checked_when_made():
    config = qkv.GenerationConfig(max_new_tokens=5, strategy="sample", top_k=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.top_k = 4  # type: ignore[misc]
    assert config.replace(top_k=4).top_k == 4 and config.top_k == 3
    for bad, words in (
        ({"strategy": "nucleus"}, "unknown strategy 'nucleus'"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"max_new_tokens": -1}, "max_new_tokens must be an int >= 0"),
        ({"num_beams": 0}, "num_beams must be an int >= 1"),
        ({"num_return_sequences": 2}, "greedy decoding has one answer"),
        ({"strategy": "beam", "num_beams": 2, "num_return_sequences": 3}, "cannot exceed num_beams"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty must be a finite number > 0"),
        ({"logits_processors": [3]}, "logits_processors must be callables"),
        ({"stopping_criteria": "stop"}, "stopping_criteria must be a list or tuple"),
        ({"max_time": -1}, "max_time must be a number of seconds > 0"),
        ({"seed": 1.5}, "seed must be an int >= 0"),
    ):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            qkv.GenerationConfig(**bad)


def test_an_unknown_override_names_the_closest_field(gpt2):
    _, model = gpt2
    with pytest.raises(ConfigError, match="'max_tokens' is not a decoding option.*did you mean 'max_new_tokens'"):
        qkv.generate(model, PROMPT, max_tokens=3)
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        qkv.translate(model, PROMPT, temprature=0.5)
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        qkv.generate_stream(model, PROMPT, topk=3)
    with pytest.raises(ConfigError, match="config must be a qkv.GenerationConfig, got int .*max_new_tokens="):
        qkv.generate(model, PROMPT, 10)  # the 0.x spelling: max_new_tokens was positional


def test_a_config_and_the_same_overrides_give_the_same_tokens(gpt2):
    _, model = gpt2
    config = qkv.GenerationConfig(max_new_tokens=12, strategy="sample", seed=3, top_k=5, repetition_penalty=1.3)
    by_config = qkv.generate(model, PROMPT, config)
    by_overrides = qkv.generate(model, PROMPT, **{f: getattr(config, f) for f in FIELDS})
    assert torch.equal(by_config, by_overrides)
    # an override beats the config's field
    assert torch.equal(qkv.generate(model, PROMPT, config, seed=4), qkv.generate(model, PROMPT, config.replace(seed=4)))
    streamed = torch.stack(list(qkv.generate_stream(model, PROMPT, config)), dim=1)
    assert torch.equal(streamed, by_config[:, PROMPT.shape[1] :])


def test_unset_max_new_tokens_fills_the_models_context(gpt2):
    _, model = gpt2
    assert qkv.generate(model, PROMPT).shape == (1, 128)  # n_positions = 128
    with pytest.raises(ConfigError, match="fills the model's context"):
        qkv.generate(model, torch.zeros(1, 128, dtype=torch.long))


def test_overloads_tensor_in_tensor_out_list_in_list_out(gpt2):
    _, model = gpt2
    assert isinstance(qkv.generate(model, PROMPT, max_new_tokens=2), torch.Tensor)
    out = qkv.generate(model, [PROMPT[0], PROMPT[0, :2]], max_new_tokens=2)
    assert isinstance(out, list) and [len(r) for r in out] == [7, 4]
    result = qkv.generate(model, [PROMPT[0, :2]], max_new_tokens=2, return_dict=True)
    assert isinstance(result, qkv.GenerateOutput) and isinstance(result.sequences, list)


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_return_dict_scores_are_what_each_token_was_chosen_from(gpt2, strategy):
    """Greedy: the step's logits from a plain forward pass over the ids so far (after the controls), and the token
    is their argmax. Sampling: temperature, then top_k: -inf outside the k best, the rest the logits / temperature."""
    _, model = gpt2
    options = {"strategy": strategy, "seed": 0, "temperature": 0.7, "top_k": 4, "repetition_penalty": 1.4}
    out = qkv.generate(model, PROMPT, max_new_tokens=6, return_dict=True, **options)
    assert len(out.scores) == 6 and out.beam_indices is None
    controls = qkv.GenerationConfig(**options).logits_controls(None)
    for step, scores in enumerate(out.scores):
        ids = out.sequences[:, : PROMPT.shape[1] + step]
        with torch.no_grad():
            logits = controls(model(ids).logits[:, -1].float(), ids, PROMPT.shape[1])
        token = out.sequences[0, PROMPT.shape[1] + step]
        if strategy == "greedy":
            torch.testing.assert_close(scores, logits, rtol=1e-5, atol=1e-5)
            assert int(scores.argmax()) == int(token)
        else:
            expected = logits / 0.7
            kept = expected >= expected.topk(4).values[..., -1:]
            torch.testing.assert_close(scores[kept], expected[kept], rtol=1e-5, atol=1e-5)
            assert torch.isneginf(scores[~kept]).all() and bool(kept[0, token])


def test_return_dict_of_beam_search_has_hfs_beam_indices(gpt2):
    """beam_indices against HF's on the same GPT-2 weights, and each sequence rebuilt from them: the token at step t
    is one the scores of row beam_indices[t] rank among the best."""
    hf, model = gpt2
    mine = qkv.generate(model, PROMPT, max_new_tokens=6, strategy="beam", num_beams=3, return_dict=True)
    theirs = hf.generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=6, num_beams=3, do_sample=False,
        length_penalty=1.0, early_stopping=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True,
    )  # fmt: skip
    assert torch.equal(mine.sequences, theirs.sequences)
    assert torch.equal(mine.beam_indices, theirs.beam_indices[:, : mine.beam_indices.shape[1]])
    assert len(mine.scores) == 6 and mine.scores[0].shape == (3, 40)


def test_a_user_logits_processor_gives_hfs_tokens(gpt2):
    """HF's LogitsProcessor shape, (ids, scores) -> scores: the same callable given to both libraries gives the same
    tokens, applied after the built-in controls (HF too appends user processors after its own)."""
    hf, model = gpt2

    def no_even_tokens_after_the_third(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] < 8:
            return scores
        even = torch.arange(scores.shape[-1], device=scores.device) % 2 == 0
        return scores.masked_fill(even, float("-inf"))

    mask = torch.ones_like(PROMPT)
    theirs = hf.generate(
        PROMPT, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, repetition_penalty=1.3,
        logits_processor=transformers.LogitsProcessorList([no_even_tokens_after_the_third]),
    )  # fmt: skip
    mine = qkv.generate(
        model, PROMPT, max_new_tokens=10, repetition_penalty=1.3, logits_processors=[no_even_tokens_after_the_third]
    )
    assert torch.equal(mine, theirs)
    assert all(t % 2 == 1 for t in mine[0, 8:].tolist())
    beam = qkv.generate(
        model,
        PROMPT,
        max_new_tokens=6,
        strategy="beam",
        num_beams=2,
        logits_processors=[no_even_tokens_after_the_third],
    )
    assert all(t % 2 == 1 for t in beam[0, 8:].tolist())


def test_user_stopping_criteria_in_hfs_shape(gpt2):
    """A criterion returning one bool per row stops a row for good; generation ends when all rows have stopped.
    The same criterion given to HF stops at the same length for one row."""
    hf, model = gpt2
    prompts = torch.tensor([[4, 29, 31], [9, 9, 1]])
    seen: list[int] = []

    def row_stops_at_length(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen.append(ids.shape[1])  # asked after every step, with that step's scores
        assert scores.shape == (ids.shape[0], 40)
        return torch.tensor([ids.shape[1] >= 6, ids.shape[1] == 9])  # row 1 says yes once only, at 9

    out = qkv.generate(model, prompts, max_new_tokens=20, stopping_criteria=[row_stops_at_length])
    assert out.shape == (2, 9) and seen == list(range(4, 10))

    class AtLength(transformers.StoppingCriteria):
        def __call__(self, ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
            return torch.full((ids.shape[0],), ids.shape[1] >= 7, dtype=torch.bool)

    theirs = hf.generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=20, do_sample=False, pad_token_id=0,
        stopping_criteria=transformers.StoppingCriteriaList([AtLength()]),
    )  # fmt: skip
    assert torch.equal(qkv.generate(model, PROMPT, max_new_tokens=20, stopping_criteria=[AtLength()]), theirs)
    with pytest.raises(ShapeError, match="one bool per row"):
        qkv.generate(model, prompts, max_new_tokens=3, stopping_criteria=[lambda ids, s: torch.ones(3, dtype=bool)])


def test_translate_takes_the_same_config_and_controls(tmp_path):
    """translate used to take a drifted subset: frequency/presence penalties and stopping criteria now apply."""
    from qkv.models import RNNSeq2Seq, RNNSeq2SeqConfig

    torch.manual_seed(0)
    config = RNNSeq2SeqConfig(src_vocab_size=20, tgt_vocab_size=20, embed_dim=8, hidden_dim=8, dropout=0.0)
    model = RNNSeq2Seq(config).eval()
    src = torch.randint(4, 20, (2, 5), generator=torch.Generator().manual_seed(0))
    plain = qkv.translate(model, src, max_new_tokens=8, eos_token_id=19)
    penalised = qkv.translate(model, src, max_new_tokens=8, eos_token_id=19, frequency_penalty=1e4)
    for row in penalised.tolist():  # 1e4 per use against logits of order 1: no token twice before the end token
        written = row[: row.index(19)] if 19 in row else row
        assert len(set(written)) == len(written), row
    stopped = qkv.translate(model, src, max_new_tokens=8, stopping_criteria=[lambda ids, s: ids.shape[1] >= 4])
    assert stopped.shape[1] == 3 and torch.equal(stopped, qkv.translate(model, src, max_new_tokens=3))
    assert plain.shape == (2, 8)
    with pytest.raises(ConfigError, match="translate always decodes step by step"):
        qkv.translate(model, src, compile=True)


def _parser(verb: str) -> argparse.ArgumentParser:
    from qkv.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


@pytest.mark.parametrize("verb", ["generate", "translate"])
def test_the_cli_flags_are_made_from_the_config_fields(verb):
    """Every decoding flag's name, type, help and default come from the GenerationConfig field; where the verb's
    default differs from the API's, its help names both."""
    from qkv.cli.decoding_flags import flag_name
    from qkv.cli.generate import GENERATE_DEFAULTS, GENERATE_FLAGS
    from qkv.cli.translate import TRANSLATE_FLAGS

    names, own = (GENERATE_FLAGS, GENERATE_DEFAULTS) if verb == "generate" else (TRANSLATE_FLAGS, {"seed": 0})
    actions = {a.dest: a for a in _parser(verb)._actions}
    fields = {f.name: f for f in dataclasses.fields(qkv.GenerationConfig)}
    for name in names:
        action = actions[name]
        assert action.option_strings == [flag_name(name)]
        help_text = fields[name].metadata.get("flag_help", fields[name].metadata["help"])
        assert action.help.startswith(help_text)
        assert action.default == own.get(name, fields[name].default)
        if name in own:
            assert "default here" in action.help and "the API's" in action.help
    if verb == "translate":  # one output line per text: one sequence each
        assert "num_return_sequences" not in actions
