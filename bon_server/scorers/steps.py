"""THE step formatter: how a solution is cut into steps and laid out for a PRM.

One function, ``format_steps``, is used by the PRM data builder and trainer in
``verifier_training`` and by the server's PRM scorer, so the text a PRM was
trained on and the text it scores at serving time cannot drift apart. Golden
tokenization tests guard it. Likewise ONE splitter, ``split_steps(text, separator)``,
cuts a completion into steps for labelling (``label-steps``), evaluation and the
server's PRM (``--step-separator``): a line for the worlds, a blank line for a
dataset (as Math-Shepherd, PRM800K and Qwen2.5-Math-PRM take steps).

A ``StepFormat`` names the tag that follows every step and where a step's score
is read:

    bon            our own PRMs: each step line followed by ``<|step|>``, a two-class
                   token-classification head read AT the tag.
    qwen           Qwen2.5-Math-PRM: steps joined (and ended) with ``<extra_0>`` in the
                   assistant turn, a two-class head read AT the tag.
    math_shepherd  Math-Shepherd: ``question step ки\\nstep ки`` (plain text, so it gets the
                   tokenizer's own BOS), a causal LM whose next-token distribution AT the
                   tag is compared for "+" against "-".
    rlhflow        RLHFlow PRMs: a chat where every step is a user turn answered by an
                   assistant "+"; the distribution predicting that "+" (one position
                   before it) is compared for "+" against "-".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..types import Prompt

Head = Literal["classify", "plus_minus"]


@dataclass(frozen=True, slots=True)
class StepFormat:
    name: str
    tag: str  # the token that marks the end of each step
    head: Head  # a 2-class token head, or a causal LM compared on "+" / "-"
    offset: int = 0  # read the score at tag position + offset
    system: str | None = None


STEP_FORMATS: dict[str, StepFormat] = {
    "bon": StepFormat("bon", "<|step|>", "classify"),
    "qwen": StepFormat(
        "qwen",
        "<extra_0>",
        "classify",
        system="Please reason step by step, and put your final answer within \\boxed{}.",
    ),
    "math_shepherd": StepFormat("math_shepherd", "ки", "plus_minus"),
    "rlhflow": StepFormat("rlhflow", "+", "plus_minus", offset=-1),
}


def check_format(name: str) -> StepFormat:
    try:
        return STEP_FORMATS[name]
    except KeyError:
        valid = ", ".join(STEP_FORMATS)
        raise ValueError(f"unknown PRM step format {name!r}; valid formats: {valid}") from None


# Where one step ends and the next begins. The worlds write one step a line; public PRMs
# and their data (Math-Shepherd, PRM800K, Qwen2.5-Math-PRM) take a step to be a paragraph.
STEP_SEPARATORS: dict[str, str] = {"line": "\n", "blank": "\n\n"}
DEFAULT_SEPARATOR = "\n"  # the worlds'; a dataset's default is "\n\n"
_BLANK_LINE = re.compile(r"\n[ \t]*(?:\r?\n[ \t]*)+")


def resolve_separator(value: str | None, default: str = DEFAULT_SEPARATOR) -> str:
    """A separator from a flag: ``line``, ``blank``, or the text itself (``\\n`` escapes read
    as newlines); None gives ``default``."""
    if value is None:
        return default
    text = STEP_SEPARATORS.get(value, value.replace("\\n", "\n").replace("\\t", "\t"))
    if not text:
        raise ValueError("the step separator is empty")
    return text


def split_steps(completion: str, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """The steps of a completion, each stripped of surrounding whitespace, empty ones dropped.

    ``"\\n"`` (the default): one step per non-empty line. ``"\\n\\n"``: one step per
    paragraph, a paragraph ending at a blank line (one holding only spaces counts). Any other
    separator: the text between its occurrences."""
    if separator == "\n":
        parts = completion.splitlines()
    elif separator == "\n\n":
        parts = _BLANK_LINE.split(completion.replace("\r\n", "\n"))
    else:
        parts = completion.split(separator)
    return [part.strip() for part in parts if part.strip()]


def join_steps(steps: Sequence[str], separator: str = DEFAULT_SEPARATOR) -> str:
    """The text of ``steps`` as a policy writes them, ending with the separator (a prefix to
    continue from: ``split_steps(join_steps(s) + rest)`` begins with ``s``)."""
    return "".join(f"{step}{separator}" for step in steps)


def _messages(fmt: StepFormat, prompt: Prompt, steps: Sequence[str]) -> list[dict[str, str]]:
    if prompt.messages is not None:
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
    else:
        messages = [{"role": "user", "content": prompt.text or ""}]
    if fmt.system is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": fmt.system})
    if fmt.name == "rlhflow":
        question = messages.pop()["content"]
        for i, step in enumerate(steps):
            messages.append({"role": "user", "content": f"{question} {step}" if i == 0 else step})
            messages.append({"role": "assistant", "content": fmt.tag})
        return messages
    if fmt.name == "qwen":
        content = fmt.tag.join(steps) + fmt.tag
    else:
        content = "".join(f"{step}{fmt.tag}\n" for step in steps)
    return [*messages, {"role": "assistant", "content": content}]


def format_steps(fmt: StepFormat, tokenizer: Any, prompt: Prompt, steps: Sequence[str]) -> str:
    """The full text a PRM reads for ``steps`` answering ``prompt``: one tag per step."""
    if fmt.name == "math_shepherd":
        body = "\n".join(f"{step} {fmt.tag}" for step in steps)
        return f"{prompt.question()} {body}"
    return tokenizer.apply_chat_template(_messages(fmt, prompt, steps), tokenize=False)


def tag_token_id(fmt: StepFormat, tokenizer: Any) -> int:
    ids = tokenizer.encode(fmt.tag, add_special_tokens=False)
    if fmt.name == "math_shepherd":
        ids = ids[-1:]  # sentencepiece may prefix a space piece
    if len(ids) != 1:
        raise ValueError(f"the step tag {fmt.tag!r} is not a single token for this tokenizer")
    return ids[0]


def encode_steps(
    fmt: StepFormat, tokenizer: Any, prompt: Prompt, steps: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Token ids of ``format_steps`` and the positions where each step's score is read.

    Raises ValueError unless there is exactly one position per step (and at least one
    step): a tag inside a step's own text would otherwise shift every label after it.
    """
    if not steps:
        raise ValueError("a PRM needs at least one step")
    text = format_steps(fmt, tokenizer, prompt, steps)
    # A chat template writes its own BOS. Math-Shepherd's plain text does not, and its
    # reference code scores ``tokenizer.encode(text)``: BOS included (Mistral adds one).
    ids = tokenizer.encode(text, add_special_tokens=fmt.name == "math_shepherd")
    tag = tag_token_id(fmt, tokenizer)
    if fmt.name == "rlhflow":
        # "+" also occurs inside arithmetic: locate each assistant turn structurally instead.
        positions = [_assistant_start(tokenizer, prompt, steps[: k + 1]) for k in range(len(steps))]
        if any(p >= len(ids) or ids[p] != tag for p in positions):
            raise ValueError("the chat template does not tokenize prefix-stably")
        return ids, [p + fmt.offset for p in positions]
    # Count only the tags after the prompt: a question may well contain the tag's text.
    start = _prompt_length(fmt, tokenizer, prompt)
    positions = [i + fmt.offset for i, t in enumerate(ids) if t == tag and i >= start]
    if len(positions) != len(steps):
        raise ValueError(f"found {len(positions)} step tags for {len(steps)} steps")
    return ids, positions


def _assistant_start(tokenizer: Any, prompt: Prompt, steps: Sequence[str]) -> int:
    """Token index of the assistant's "+" that answers the last of ``steps``."""
    messages = _messages(STEP_FORMATS["rlhflow"], prompt, steps)[:-1]
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(head, add_special_tokens=False))


def _prompt_length(fmt: StepFormat, tokenizer: Any, prompt: Prompt) -> int:
    """Tokens before the first step: a lower bound where tokenization may merge at the seam."""
    if fmt.name == "math_shepherd":
        return max(0, len(tokenizer.encode(prompt.question(), add_special_tokens=True)) - 1)
    messages = _messages(fmt, prompt, ["x"])[:-1]
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(head, add_special_tokens=False))
