"""The project's tokenizers: character-level, or character-level with numbers as words.

One token per character: every printable ASCII character plus ``\\n`` and ``\\t``; any other
character becomes ``<|unk|>``. Seven special tokens frame chats::

    <|bos|><|system|>...<|end|><|user|>What is 2 + 3?<|end|><|assistant|>= 5
    The answer is 5.<|end|>

``<|end|>`` is the EOS token. Decoding concatenates characters (WordLevel's default decoding
would join them with spaces). The tokenizer is saved with ``transformers``'
``PreTrainedTokenizerFast`` so that both ``AutoTokenizer.from_pretrained(dir)`` and vLLM load
it from a model directory.

With ``numbers=True`` (the Countdown policies) every number from 10 to 999 written without a
leading zero is one token too (``57`` is one token, ``1234`` is ``123`` + ``4``): copying an
operand from the prompt becomes a one-token lookup and ``a op b = c`` facts a table, while
the text is still any string. With ``arrows=True`` as well (the graph-path policies) a number
followed by ``>`` is one token (``12>3`` is ``12>`` + ``3``): following an edge listed in the
prompt is then the plain induction-head lookup "find the token I just wrote, copy the one after
it" (with numbers alone, a 1.19M-parameter policy trained 1500 steps still copied only 41% of
first edges greedily).
"""

from __future__ import annotations

import re

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS, END, PAD, UNK = "<|bos|>", "<|end|>", "<|pad|>", "<|unk|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, END, UNK, SYSTEM, USER, ASSISTANT)
# The 95 printable ASCII characters (space to ~), plus \t and \n.
CHARACTERS: tuple[str, ...] = ("\t", "\n") + tuple(chr(c) for c in range(32, 127))

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] not in ['system','user','assistant'] %}"
    "{{ raise_exception('unsupported role ' + m['role']) }}"
    "{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MODEL_MAX_LENGTH = 512


NUMBERS: tuple[str, ...] = tuple(str(n) for n in range(10, 1000))
ARROWS: tuple[str, ...] = tuple(f"{n}>" for n in range(0, 1000))
# edges=True: every edge between graph-paths labels 1..99 is one token, twice: ``12>3`` (as the
# prompt lists it) and ``12>3\n`` (a solution step with its newline).
EDGE_LABELS = range(1, 100)
EDGES: tuple[str, ...] = tuple(f"{a}>{b}" for a in EDGE_LABELS for b in EDGE_LABELS)
STEP_EDGES: tuple[str, ...] = tuple(f"{e}\n" for e in EDGES)
_EDGE = re.compile(r"^([1-9]\d?)>([1-9]\d?)(\n?)$")


def edge_token(token: str) -> tuple[int, int, bool] | None:
    """An edge token (``12>3`` or ``12>3\n``) as (source, target, is a step); None otherwise."""
    m = _EDGE.match(token)
    return None if m is None else (int(m[1]), int(m[2]), bool(m[3]))


def is_label_token(token: str) -> bool:
    """A number, or (arrows) a number with its ``>``: the tokens lookups and copies produce."""
    return token.rstrip(">").isdigit() or edge_token(token) is not None


def build_tokenizer(
    model_max_length: int = MODEL_MAX_LENGTH, numbers: bool = False, arrows: bool = False,
    edges: bool = False,
) -> PreTrainedTokenizerFast:
    """A fresh tokenizer with the special tokens and the chat template: one token per
    character; with ``numbers`` one per number 10..999 as well; with ``arrows`` (which
    implies ``numbers``) one per number followed by ``>``; with ``edges`` (which implies
    ``arrows``) one per edge ``a>b`` between labels 1..99 and one per step line ``a>b\n``
    (greedy, left to right: ``The answer is 12>3>57.`` is ``12>3`` ``>`` ``57``)."""
    arrows = arrows or edges
    numbers = numbers or arrows
    words = SPECIAL_TOKENS + CHARACTERS + (NUMBERS if numbers else ()) + (ARROWS if arrows else ())
    words += (EDGES + STEP_EDGES) if edges else ()
    vocab = {tok: i for i, tok in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character, newlines included, is its own pre-token (and so is a number, and a
    # number with its arrow).
    pattern = r"[\s\S]"
    if numbers:
        pattern = r"[1-9]\d{1,2}|" + pattern
    if arrows:
        pattern = r"(?:[1-9]\d{0,2}|0)>|" + pattern
    if edges:
        pattern = r"[1-9]\d?>[1-9]\d?(?!\d)\n?|" + pattern
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    core.decoder = decoders.Fuse()  # concatenate: no spaces between characters
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str) -> None:
    """Save into a model directory, with the chat template inside tokenizer_config.json.

    (transformers 5 would otherwise write it to chat_template.jinja; both files are read by
    ``AutoTokenizer`` and vLLM, but keeping it in tokenizer_config.json also suits older readers.)
    """
    tokenizer.save_pretrained(directory, save_jinja_files=False)
