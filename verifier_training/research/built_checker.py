"""A graph-path checker built into a transformer's weights: the paths world's ORM init.

    python -m verifier_training.research build-checker --out runs/paths/checker-init
    python -m verifier_training train-orm --init runs/paths/checker-init ...

Checking a path is a lookup: is each consecutive pair of the answer a listed edge, does it
start at the start and end at the target? The paths ORMs trained here from the policy learned
none of it (pairwise accuracy 0.63, below voting), the way the policy had not learned to
follow an edge until a lookup head was built into it. This module writes the lookup itself
into a ``LlamaForSequenceClassification`` (character tokens, numbers 10..999 as one token, so
that every label is one token), the way Tracr compiles a program into weights, and leaves
``train-orm`` to train it like any init. Three layers, heads of 256 dimensions, no MLP
(zeroed), ``rope_theta`` 1e30 so that all but the six fastest rotary pairs are flat over the
sequence (content matches there do not depend on distance; the fast pairs give positional
heads):

- layer 0: ``prev2`` copies the label two tokens back (``12>3``: at ``3``, ``12``; ``from
  12``: at ``12``, the ``m`` of ``from``; ``to 57``: the ``o`` of ``to``; ``is 12``: the ``s``
  of ``is``), ``prev1`` the token just before, and ``region`` marks the completion (after
  ``<|assistant|>``) and its answer line (after a ``T``);
- layer 1: ``match``: each label looks for a prompt position holding the same label and the
  same token two back (an answer's ``3`` after ``12>`` finds the listed ``12>3``; the answer's
  first label, after ``is``, finds ``from X``; the answer's ``.`` asks for ``to X`` with X the
  label before it), keys inside the completion pushed away; what finds nothing attends to
  ``<|bos|>``, whose value is a "not found" flag; ``line``: an answer line's ``T`` must follow
  a newline (the checker reads the last line only), else it too is "not found";
- layer 2: ``gather``: the last token averages "not found" over the answer line's ``T``,
  labels and full stop (no answer line: ``<|bos|>``'s own flag, 1); the score is ``bias - gain x``
  that mean.

So at init the score is the task's checker on any completion whose answer line is written as
the prompt writes edges (``12>3>57``, no spaces), computed from the prompt alone: no
reference answer is read. ``measure`` reports how often it agrees with the checker.
"""

from __future__ import annotations

import math
import os

import torch

from verifier_training.cli import command_parser
from verifier_training.data.records import write_json
from verifier_training.research import RESEARCH
from verifier_training.train.tokenizer import build_tokenizer, save_tokenizer

LABELS = range(1, 100)
CHARS = ("m", "o", "s", "\n")  # the letters two before a label (from X, to X, is X); newline
CODES = len(LABELS) + len(CHARS)  # one slot per label and per letter
C = 8.0  # every token's constant component: keeps the RMS norms near one value
HEAD_DIM, HEADS, LAYERS = 256, 4, 3  # 3 heads used at most; Llama wants HIDDEN % HEADS == 0
ROPE_THETA = 1e30
FAST = range(6)  # rotary pairs that turn (1.0 .. 0.067 rad per position)
SLOW = [j for j in range(14, HEAD_DIM // 2)] + [j + HEAD_DIM // 2 for j in range(14, HEAD_DIM // 2)]

# Residual stream layout.
ONE = 0
LAB = 1  # the token's own code (CODES slots)
PREV = LAB + CODES  # the code two tokens back
PREV1 = PREV + CODES  # the code one token back
BOS, ASSIST, TCHAR, CF, AF, NF, DOT, CHECK, NFMEAN = range(PREV1 + CODES, PREV1 + CODES + 9)
HIDDEN = 320
assert NFMEAN < HIDDEN


def code_slot(token: str) -> int | None:
    if token.isdigit() and int(token) in LABELS and str(int(token)) == token:
        return int(token) - 1
    if token in CHARS:
        return len(LABELS) + CHARS.index(token)
    return None


def _config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=8,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        head_dim=HEAD_DIM, max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=False, pad_token_id=pad_id, bos_token_id=bos_id,
        eos_token_id=eos_id, num_labels=1, attention_bias=False, mlp_bias=False,
    )


def _positional(q: torch.Tensor, k: torch.Tensor, head: int, offset: int, gain: float) -> None:
    """Rows of q/k that make ``head`` attend ``offset`` tokens back (fast rotary pairs): the
    query is the constant turned by ``-offset`` times each pair's angle, the key the constant."""
    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2).double() / HEAD_DIM))
    base = head * HEAD_DIM
    for j in FAST:
        phi = -offset * inv[j].item()
        q[base + j, ONE] = gain * math.cos(phi) / C
        q[base + j + HEAD_DIM // 2, ONE] = gain * math.sin(phi) / C
        k[base + j, ONE] = 1.0 / C


@torch.no_grad()
def build(tokenizer, *, position_gain: float = 14.0, region_gain: float = 40.0,
          match_gain: float = 60.0, gather_gain: float = 20.0, bias: float = 6.0,
          gain: float = 100.0, line_gain: float = 120.0, decision: bool = True):
    """The checker as a ``LlamaForSequenceClassification`` (float32) for ``tokenizer``. With
    ``decision=False`` only the lookups are built (layers 0 and 1): the gather layer and the
    score head keep a random init (normal, std 0.02), for training to learn how to combine the
    "not found" flags from outcome labels."""
    from transformers import LlamaForSequenceClassification

    vocab = tokenizer.get_vocab()
    config = _config(len(vocab), tokenizer.pad_token_id, tokenizer.bos_token_id,
                     tokenizer.eos_token_id)
    model = LlamaForSequenceClassification(config).float()
    for p in model.parameters():
        p.zero_()

    emb = model.model.embed_tokens.weight
    emb[:, ONE] = C
    for token, i in vocab.items():
        slot = code_slot(token)
        if slot is not None:
            emb[i, LAB + slot] = 1.0
            if slot < len(LABELS):
                emb[i, CHECK] = 1.0
    emb[vocab[tokenizer.bos_token], BOS] = 1.0
    emb[vocab["<|assistant|>"], ASSIST] = 1.0
    emb[vocab["T"], TCHAR] = 1.0
    emb[vocab["T"], CHECK] = 1.0
    emb[vocab["."], DOT] = 1.0
    emb[vocab["."], CHECK] = 1.0

    # Norms: x / rms(x) * w with w = C / sqrt(HIDDEN) gives about x * C / |x|: near x itself.
    for layer in model.model.layers:
        layer.input_layernorm.weight.fill_(C / math.sqrt(HIDDEN))
        layer.post_attention_layernorm.weight.fill_(C / math.sqrt(HIDDEN))
    model.model.norm.weight.fill_(C / math.sqrt(HIDDEN))
    scale = math.sqrt(HEAD_DIM)  # undo the attention's 1/sqrt(head_dim)

    # Layer 0: prev2 (head 0), prev1 (head 1), region (head 2).
    a0 = model.model.layers[0].self_attn
    q, k, v, o = a0.q_proj.weight, a0.k_proj.weight, a0.v_proj.weight, a0.o_proj.weight
    for head, offset, dest in ((0, 2, PREV), (1, 1, PREV1)):
        _positional(q, k, head, offset, position_gain * scale)
        for s in range(CODES):
            v[head * HEAD_DIM + s, LAB + s] = 1.0
            o[dest + s, head * HEAD_DIM + s] = 1.0
    base = 2 * HEAD_DIM
    q[base + SLOW[0], ONE] = region_gain * scale / C
    k[base + SLOW[0], BOS] = 0.5
    k[base + SLOW[0], ASSIST] = 1.0
    k[base + SLOW[0], TCHAR] = 1.5
    v[base + 0, ASSIST] = 1.0
    v[base + 0, TCHAR] = 1.0
    v[base + 1, TCHAR] = 1.0
    o[CF, base + 0] = 1.0
    o[AF, base + 1] = 1.0

    # Layer 1: match (head 0).
    a1 = model.model.layers[1].self_attn
    q, k, v, o = a1.q_proj.weight, a1.k_proj.weight, a1.v_proj.weight, a1.o_proj.weight
    g = match_gain * scale
    labels = range(len(LABELS))
    m_slot, o_slot, s_slot = (len(LABELS) + CHARS.index(c) for c in "mos")
    for s in range(CODES):
        k[SLOW[s], LAB + s] = 1.0
        k[SLOW[CODES + s], PREV + s] = 1.0
    for s in labels:
        q[SLOW[s], LAB + s] = g
        q[SLOW[s], PREV1 + s] = g  # at a full stop: the label before it
        q[SLOW[CODES + s], PREV + s] = g
    q[SLOW[CODES + m_slot], PREV + s_slot] = g  # "is X" asks for "from X"
    q[SLOW[CODES + m_slot], DOT] = -g  # ... but not at a full stop
    q[SLOW[CODES + o_slot], DOT] = g  # "X." asks for "to X"
    sink, gate = SLOW[2 * CODES], SLOW[2 * CODES + 1]
    q[sink, ONE] = g / C
    k[sink, BOS] = 1.5
    q[gate, ONE] = g / C
    k[gate, CF] = -4.0
    t_self = SLOW[2 * CODES + 2]  # a T finds itself here (its line is head 1's to check)
    q[t_self, TCHAR] = 6.0 * g
    k[t_self, TCHAR] = 1.0
    v[0, BOS] = 1.0
    o[NF, 0] = 1.0
    # Head 1: the answer line must be a line of its own: a T right after a newline attends to
    # itself, any other T to <|bos|> ("not found"); every other token attends to itself.
    _positional(q, k, 1, 0, position_gain * scale)
    base, nl = HEAD_DIM, len(LABELS) + CHARS.index("\n")
    q[base + SLOW[0], TCHAR] = line_gain * scale
    k[base + SLOW[0], BOS] = 1.0
    q[base + SLOW[1], PREV1 + nl] = line_gain * scale
    k[base + SLOW[1], PREV1 + nl] = 1.0
    v[base + 0, BOS] = 1.0
    o[NF, base + 0] = 1.0

    # Layer 2: gather (head 0) at the last token.
    a2 = model.model.layers[2].self_attn
    q, k, v, o = a2.q_proj.weight, a2.k_proj.weight, a2.v_proj.weight, a2.o_proj.weight
    q[SLOW[0], ONE] = gather_gain * scale / C
    k[SLOW[0], AF] = 1.0
    k[SLOW[0], CHECK] = 1.0
    k[SLOW[0], BOS] = 1.5
    v[0, NF] = 1.0
    o[NFMEAN, 0] = 1.0

    model.score.weight[0, ONE] = bias / C
    model.score.weight[0, NFMEAN] = -gain
    if not decision:
        g = torch.Generator().manual_seed(0)
        for w in (a2.q_proj.weight, a2.k_proj.weight, a2.v_proj.weight, a2.o_proj.weight,
                  model.score.weight):
            w.copy_(torch.randn(w.shape, generator=g) * 0.02)
    return model


def measure(model, tokenizer, records, batch_size: int = 64) -> dict[str, float]:
    """How often the model's call (P(correct) >= 0.5) agrees with the checker's label."""
    from bon_server.scorers.orm import format_for_orm
    from verifier_training.train.orm import predict

    texts = [format_for_orm(tokenizer, r.prompt, r.completion) for r in records]
    probs = predict(model, tokenizer, texts, batch_size)
    agree = [(p >= 0.5) == r.correct for p, r in zip(probs, records, strict=True)]
    right = [p for p, r in zip(probs, records, strict=True) if r.correct]
    wrong = [p for p, r in zip(probs, records, strict=True) if not r.correct]
    return {
        "agreement": sum(agree) / len(agree),
        "right_called_right": sum(p >= 0.5 for p in right) / max(1, len(right)),
        "wrong_called_wrong": sum(p < 0.5 for p in wrong) / max(1, len(wrong)),
        "records": len(records),
    }


def main(argv: list[str] | None = None) -> int:
    p = command_parser("build-checker", __doc__, entry=RESEARCH)
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--check", default=None,
                   help="optional JSONL of paths SampleRecords: report agreement with the checker")
    p.add_argument("--max-records", type=int, default=4000)
    p.add_argument("--random-decision", action="store_true",
                   help="build only the lookups; leave the gather layer and score head random "
                        "(train-orm learns them)")
    args = p.parse_args(argv)
    tokenizer = build_tokenizer(numbers=True)
    model = build(tokenizer, decision=not args.random_decision)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    save_tokenizer(tokenizer, args.out)
    record = {"command": "python -m verifier_training.research build-checker", "flags": vars(args),
              "model": {"class": type(model).__name__,
                        "parameters": sum(x.numel() for x in model.parameters()),
                        "read_as": "sigmoid(logit) = P(correct)", "built": True}}
    if args.check:
        from verifier_training.data.records import read_samples

        records = read_samples(args.check)[: args.max_records]
        record["agreement"] = measure(model, tokenizer, records)
        print("agreement with the checker: " + "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in record["agreement"].items()))
    write_json(os.path.join(args.out, "training_config.json"), record)
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
