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
