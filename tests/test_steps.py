"""The step formatter: golden text and score positions for every format, and its refusals.

One arithmetic example is laid out in each format with the project's character-level
tokenizer (plus the tokens each format needs), and the exact text, positions and the
token at (or after) each position are written out by hand.
"""

from __future__ import annotations

import pytest
from tiny_models import step_tokenizer
from tokenizers import processors

from bon_server.scorers.steps import (
    STEP_FORMATS,
    check_format,
    encode_steps,
    format_steps,
    split_steps,
)
from bon_server.types import Message, Prompt
from verifier_training.train.tokenizer import build_tokenizer

PROMPT = Prompt(messages=(Message("user", "What is 2 + 3 * 4?"),))
STEPS = ["3 * 4 = 12", "2 + 12 = 14", "The answer is 14."]
QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


GOLDEN = {
    "bon": (
        "<|bos|><|user|>What is 2 + 3 * 4?<|end|><|assistant|>"
        "3 * 4 = 12<|step|>\n2 + 12 = 14<|step|>\nThe answer is 14.<|step|>\n<|end|>",
        [32, 45, 64],
    ),
    "qwen": (
        f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3 * 4?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "3 * 4 = 12<extra_0>2 + 12 = 14<extra_0>The answer is 14.<extra_0><|im_end|>\n",
        [127, 139, 157],
    ),
    "math_shepherd": (
        "What is 2 + 3 * 4? 3 * 4 = 12 ки\n2 + 12 = 14 ки\nThe answer is 14. ки",
        [30, 44, 64],
    ),
    "rlhflow": (
        "<|bos|><|user|>What is 2 + 3 * 4? 3 * 4 = 12<|end|><|assistant|>+<|end|>"
        "<|user|>2 + 12 = 14<|end|><|assistant|>+<|end|>"
        "<|user|>The answer is 14.<|end|><|assistant|>+<|end|>",
        [32, 48, 70],
    ),
}


@pytest.mark.parametrize("name", list(STEP_FORMATS))
def test_golden_text_and_positions(name):
    tok = step_tokenizer(name)
    fmt = STEP_FORMATS[name]
    text, positions = GOLDEN[name]
    assert format_steps(fmt, tok, PROMPT, STEPS) == text
    ids, got = encode_steps(fmt, tok, PROMPT, STEPS)
    assert got == positions
    assert tok.decode(ids) == text
    tokens = tok.convert_ids_to_tokens(ids)
    if name == "rlhflow":
        # read one before the assistant's "+", although "+" also occurs in the question
        assert [tokens[p] for p in got] == ["<|assistant|>"] * 3
        assert [tokens[p + 1] for p in got] == ["+"] * 3
        assert tokens.count("+") == 5
    else:
        assert [tokens[p] for p in got] == [fmt.tag] * 3


def test_math_shepherd_keeps_the_tokenizers_bos():
    # Math-Shepherd's reference code scores tokenizer.encode(text): Mistral prepends <s>.
    tok = step_tokenizer("math_shepherd")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", tok.bos_token_id)]
    )
    ids, positions = encode_steps(STEP_FORMATS["math_shepherd"], tok, PROMPT, STEPS)
    assert ids[0] == tok.bos_token_id
    assert positions == [31, 45, 65]
    assert tok.convert_ids_to_tokens([ids[p] for p in positions]) == ["ки"] * 3


@pytest.mark.parametrize("name", list(STEP_FORMATS))
def test_one_position_per_step(name):
    tok = step_tokenizer(name)
    for steps in (STEPS[:1], STEPS[:2], [*STEPS, "Check: 14 - 2 = 12.", "Done."]):
        _, positions = encode_steps(STEP_FORMATS[name], tok, PROMPT, steps)
        assert len(positions) == len(steps)
        assert positions == sorted(set(positions))


@pytest.mark.parametrize("name", ["bon", "qwen", "math_shepherd"])
def test_a_step_holding_the_tag_is_refused(name):
    tok = step_tokenizer(name)
    fmt = STEP_FORMATS[name]
    with pytest.raises(ValueError, match="4 step tags for 3 steps"):
        encode_steps(fmt, tok, PROMPT, [STEPS[0], f"2 + 12 {fmt.tag} 14", STEPS[2]])


@pytest.mark.parametrize("name", list(STEP_FORMATS))
def test_no_steps_is_refused(name):
    with pytest.raises(ValueError, match="at least one step"):
        encode_steps(STEP_FORMATS[name], step_tokenizer(name), PROMPT, [])


def test_a_tag_that_is_not_one_token_is_refused():
    with pytest.raises(ValueError, match="not a single token"):
        encode_steps(STEP_FORMATS["bon"], build_tokenizer(), PROMPT, STEPS)


def test_completion_prompts_and_system_messages():
    tok = step_tokenizer("qwen")
    fmt = STEP_FORMATS["qwen"]
    text = format_steps(fmt, tok, Prompt(text="1 + 1 ="), ["1 + 1 = 2"])
    assert text.startswith(
        f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n1 + 1 ="
    )
    own = Prompt(messages=(Message("system", "Be brief."), Message("user", "1 + 1 =")))
    text = format_steps(fmt, tok, own, ["2"])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and QWEN_SYSTEM not in text


def test_split_steps():
    assert split_steps("  a = 1 \n\n\tb = 2\r\n  \nThe answer is 2.\n") == [
        "a = 1",
        "b = 2",
        "The answer is 2.",
    ]
    assert split_steps("") == [] and split_steps(" \n \n") == []


def test_unknown_format_lists_the_valid_ones():
    assert check_format("rlhflow") is STEP_FORMATS["rlhflow"]
    with pytest.raises(ValueError, match="bon, qwen, math_shepherd, rlhflow"):
        check_format("shepherd")


def test_tags_inside_the_question_are_not_counted():
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|step|>"]})
    fmt = STEP_FORMATS["bon"]
    prompt = Prompt(messages=(Message("user", "What does <|step|> mean in 2 + 3?"),))
    ids, positions = encode_steps(fmt, tok, prompt, ["= 5", "The answer is 5."])
    assert len(positions) == 2
    tag = tok.convert_tokens_to_ids("<|step|>")
    assert [ids[p] for p in positions] == [tag, tag]
    assert positions[0] > ids.index(tag)  # the question's own tag is skipped


# --- the step separator: a line (the worlds), a blank line (datasets, the public PRMs) --------

PARAGRAPHS = "Add first.\n3 * 4 = 12\n\n2 + 12 = 14\n  \t\n\nThe answer is 14.\n"


def test_split_steps_at_blank_lines():
    assert split_steps(PARAGRAPHS, "\n\n") == ["Add first.\n3 * 4 = 12", "2 + 12 = 14",
                                               "The answer is 14."]
    assert split_steps(PARAGRAPHS) == ["Add first.", "3 * 4 = 12", "2 + 12 = 14",
                                       "The answer is 14."]
    assert split_steps("a\r\n\r\nb", "\n\n") == ["a", "b"]
    assert split_steps("a ки b ки", " ки") == ["a", "b"]
    assert split_steps("\n\n \n", "\n\n") == []


def test_join_steps_is_a_prefix_split_steps_gives_back():
    from bon_server.scorers.steps import join_steps

    for sep in ("\n", "\n\n"):
        steps = split_steps(PARAGRAPHS, sep)
        prefix = join_steps(steps[:2], sep)
        assert split_steps(prefix + "rest", sep)[:2] == steps[:2]
        assert split_steps(prefix + "rest", sep)[2] == "rest"


def test_separator_names():
    from bon_server.scorers.steps import resolve_separator

    assert resolve_separator("blank") == "\n\n" and resolve_separator("line") == "\n"
    assert resolve_separator(None) == "\n" and resolve_separator(None, "\n\n") == "\n\n"
    assert resolve_separator("\\n\\n") == "\n\n" and resolve_separator("ки") == "ки"
    with pytest.raises(ValueError, match="empty"):
        resolve_separator("")


def test_the_server_prm_cuts_steps_at_its_separator(tmp_path):
    """The served PRM scores one step per paragraph with ``step_separator`` blank, one per
    line by default; Settings carries the flag to the scorer."""
    import asyncio

    from test_prm import build_tiny_prm, candidate

    from bon_server.config import Settings
    from bon_server.scorers import build_scorer

    path = build_tiny_prm(tmp_path / "prm", "bon")
    common = dict(verifier=str(path), verifier_kind="prm", verifier_device="cpu",
                  verifier_dtype="float32")
    blank = build_scorer(Settings(**common, step_separator="blank"))
    line = build_scorer(Settings(**common))
    assert blank.step_separator == "\n\n" and line.step_separator == "\n"
    text = PARAGRAPHS

    def scores(scorer):
        return asyncio.run(scorer.step_scores(PROMPT, [candidate(text)]))[0]

    by_blank, by_line = scores(blank), scores(line)
    assert len(by_blank) == 3 and len(by_line) == 4


def test_the_remote_prm_and_the_page_cut_steps_as_the_served_prm_does(tmp_path):
    """``--verifier-url``: the remote PRM lays out one tagged step per paragraph too, and the
    response's per-step display splits a candidate where the PRM did."""
    from test_prm import build_tiny_prm

    from bon_server.config import Settings
    from bon_server.responses import _steps
    from bon_server.scorers.remote import RemotePRMScorer
    from bon_server.scorers.steps import resolve_separator

    path = build_tiny_prm(tmp_path / "prm", "bon")
    counts = {}
    for name in ("blank", "line"):
        settings = Settings(verifier=str(path), verifier_kind="prm", step_separator=name,
                            upstream="http://127.0.0.1:9/v1",
                            verifier_url="http://127.0.0.1:9")
        remote = RemotePRMScorer.from_settings(settings)
        encoded = remote.encode(PROMPT, PARAGRAPHS, 4096)
        assert encoded is not None
        counts[name] = len(encoded[1])  # one read position a step
        shown = _steps(PARAGRAPHS, [0.5] * counts[name], resolve_separator(name))
        assert len(shown) == counts[name] and all(s.score == 0.5 for s in shown)
    assert counts == {"blank": 3, "line": 4}
