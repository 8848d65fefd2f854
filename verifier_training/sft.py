"""Train a world's policy from scratch by supervised fine-tuning on reference solutions.

    python -m verifier_training sft --out bon_server/embedded/arith-policy
    python -m verifier_training sft --task paths --out bon_server/embedded/paths-policy ...

Every training example is a freshly generated problem rendered with the chat template, then
its reference solution and ``<|end|>``; the loss covers only assistant answers. Some examples
carry a short system message, some an earlier user/assistant turn (another problem with its
solution, also trained on), so the model stays sane under system prompts and multi-turn
chats. Each step's examples are packed into rows with attention kept within each example.
The defaults below are the flags that produced the shipped model in
``bon_server/embedded/arith-policy``; each shipped policy's ``training_config.json`` holds
its own. The run is seeded and reproducible on the same torch version and thread count.

Evaluation problems are kept out of training by prompt: the first ``--exclude-eval``
problems of the held-out stream (seed 1234, what ``passk``, ``sample`` and ``evaluate``
draw from) are skipped when they come up, and the run reports how often that happened.

The output is a Hugging Face model directory (``LlamaForCausalLM``, float32 safetensors,
the tokenizer with its chat template) plus ``training_config.json`` with every resolved flag.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

# When another process also wants the cores (a vLLM engine, another training), busy-waiting
# OpenMP threads make each step several times slower; sleeping waiters cost little otherwise.
# It must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

from bon_server.tasks import TASKS, get_task  # noqa: E402
from bon_server.tasks.base import (  # noqa: E402
    EVAL_SEED,
    HELD_OUT,
    Stream,
    held_out_questions,
)
from verifier_training.tokenizer import (  # noqa: E402
    ASSISTANT,
    END,
    build_tokenizer,
    edge_token,
    is_label_token,
    save_tokenizer,
)

SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a careful math tutor. Solve the problem step by step.",
    "Answer the user's question accurately and concisely.",
    "You are a helpful assistant that is good at arithmetic.",
    "Think carefully and show your work.",
)
IGNORE = -100  # label for positions without loss


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m verifier_training sft", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--out", required=True, help="output model directory (created; files in it are overwritten)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the data stream and the weight init"
    )
    p.add_argument("--task", default="arith", choices=list(TASKS), help="the world to learn")
    p.add_argument(
        "--init",
        default=None,
        help="continue training this policy directory (its tokenizer and shape; the model "
        "flags are ignored; give another --seed for fresh problems)",
    )
    p.add_argument(
        "--tokenizer",
        default="auto",
        choices=("auto", "char", "numbers", "arrows", "edges"),
        help="char: one token per character; numbers: numbers 10..999 one token each too; "
        "arrows: and a number with its '>' one token; edges: and every edge 'a>b' between "
        "labels 1..99 one token, a step line 'a>b\\n' another, so following an edge is one "
        "attention hop from the step just written (auto: arrows for paths, numbers for "
        "countdown, char for arith)",
    )
    p.add_argument(
        "--mimetic-init",
        action="store_true",
        help="start every attention layer as a copier (W_k = W_q, W_o = W_v^T; Trockman & "
        "Kolter 2023): a paths policy left its unigram plateau by step 150 with it, not at all "
        "in 300-700 steps without",
    )
    p.add_argument(
        "--mimetic-layers",
        type=int,
        default=None,
        help="with --mimetic-init: only the first N layers (default: all). With "
        "--edge-lookup-head, 1 keeps the later layers from copying the prompt's copy of the "
        "step just written over the lookup",
    )
    p.add_argument(
        "--prev-token-head",
        action="store_true",
        help="build head 0 of layer 0 as a previous-token head (RoPE-aligned, on a shared "
        "embedding direction): the first half of an induction circuit, which a tiny model "
        "otherwise finds only after a long plateau",
    )
    p.add_argument(
        "--arrow-init",
        default="compose",
        choices=("compose", "random"),
        help="arrows tokenizer only: start each 'N>' embedding as (emb(N) + emb('>')) / sqrt 2 "
        "(compose), so that writing the node just reached as the next step's 'N>' is not a "
        "99-entry table to learn from scratch; random: like every other token",
    )
    p.add_argument(
        "--edge-scale",
        type=float,
        default=1.0,
        help="edges tokenizer only: multiply the composed edge embeddings by this (their norm "
        "bounds how sharply a copied edge is predicted among 21,696 tokens)",
    )
    p.add_argument(
        "--step-gain",
        type=float,
        default=None,
        help="edges tokenizer only: compose a step 'a>b\\n' as (gain * (emb(a) + R emb(b)) + "
        "emb('\\n')) / sqrt 2, so that above 1 a copied prompt edge scores its step form first "
        "(default: the older (emb(a) + R emb(b) + emb('\\n')) / sqrt 3, where the prompt form "
        "wins and a third of samples lost the answer line's newline)",
    )
    p.add_argument(
        "--first-hop",
        action="store_true",
        help="with --edge-lookup-head: also build the first step (the assistant token attends "
        "to the listed edges whose source is the start; see first_hop_init)",
    )
    p.add_argument(
        "--edge-lookup-head",
        action="store_true",
        help="edges tokenizer only: build layer 0's attention as edge lookups (a step 'a>b\\n' "
        "attends to the listed edges 'b>c'; see edge_lookup_head_init)",
    )
    p.add_argument(
        "--exclude-eval",
        type=int,
        default=HELD_OUT,
        help="never train on the first N problems of the held-out stream (seed 1234)",
    )
    # model
    p.add_argument("--hidden-size", type=int, default=128, help="transformer width")
    p.add_argument("--layers", type=int, default=4, help="number of transformer layers")
    p.add_argument("--heads", type=int, default=4, help="number of attention heads")
    p.add_argument("--intermediate-size", type=int, default=512, help="MLP hidden width")
    p.add_argument(
        "--max-position-embeddings", type=int, default=512, help="context length of the model"
    )
    # optimisation
    p.add_argument("--steps", type=int, default=1400, help="number of optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="examples per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument(
        "--warmup-steps", type=int, default=100, help="linear warmup steps before the cosine decay"
    )
    p.add_argument(
        "--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of the peak lr"
    )
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    p.add_argument(
        "--grad-clip",
        type=float,
        default=1.0,
        help="clip the gradient norm to this (0: no clipping)",
    )
    # data
    p.add_argument(
        "--system-frac", type=float, default=0.15, help="fraction of examples with a system message"
    )
    p.add_argument(
        "--multiturn-frac",
        type=float,
        default=0.10,
        help="fraction of examples with an earlier turn",
    )
    p.add_argument(
        "--prompt-loss",
        action="store_true",
        help="train on the prompts' tokens too, not only the answers (tried for paths, whose "
        "prompts repeat labels: it did not shorten the plateau within 300 steps)",
    )
    p.add_argument(
        "--pack-len",
        type=int,
        default=256,
        help="pack each batch's examples into rows of this many "
        "tokens (attention stays within each example)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="every N steps, print the loss on 64 held-out problems' answers, split into label "
        "tokens (numbers, arrows: what lookups and copies produce) and the rest (0: never)",
    )
    # machine
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return p.parse_args(argv)


def make_example(
    stream: Stream, tokenizer, args: argparse.Namespace
) -> tuple[list[int], list[int]]:
    """One chat, as (input ids, labels); labels only on assistant answers (and their <|end|>)."""
    rng, task = stream.rng, stream.task
    messages = []
    if rng.random() < args.system_frac:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if rng.random() < args.multiturn_frac:
        earlier = stream.next()
        messages.append({"role": "user", "content": earlier.question})
        messages.append({"role": "assistant", "content": task.reference(earlier)})
    problem = stream.next()
    messages.append({"role": "user", "content": problem.question})
    messages.append({"role": "assistant", "content": task.reference(problem)})

    # Render the chat turn by turn with the template, so the training text is exactly what the
    # template gives at inference; each assistant turn is the model's to predict.
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        assert prompt.startswith(rendered)
        context = tokenizer.encode(prompt[len(rendered) :], add_special_tokens=False)
        answer = tokenizer.encode(message["content"] + END, add_special_tokens=False)
        ids += context + answer
        labels += (context if args.prompt_loss else [IGNORE] * len(context)) + answer
        rendered = prompt + message["content"] + END
    assert rendered == tokenizer.apply_chat_template(messages, tokenize=False)
    return ids, labels


def pack(examples: list[tuple[list[int], list[int]]], width: int, pad_id: int):
    """Pack examples into rows of `width` tokens (first fit, longest first).

    Position ids restart at 0 for every example; transformers reads the restarts as packed
    sequences and masks attention block-diagonally, so examples never see each other. The
    unused tail of a row is padding (its own block, no loss).
    """
    width = max(width, max(len(x) for x, _ in examples))
    rows: list[list[tuple[list[int], list[int]]]] = []
    room: list[int] = []
    for ex in sorted(examples, key=lambda ex: -len(ex[0])):
        for r, free in enumerate(room):
            if len(ex[0]) <= free:
                rows[r].append(ex)
                room[r] -= len(ex[0])
                break
        else:
            rows.append([ex])
            room.append(width - len(ex[0]))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for x, y in row:
            ids[r, at : at + len(x)] = torch.tensor(x)
            labels[r, at : at + len(y)] = torch.tensor(y)
            positions[r, at : at + len(x)] = torch.arange(len(x))
            at += len(x)
        positions[r, at:] = torch.arange(width - at)
    return ids, labels, positions


def lr_factor(step: int, args: argparse.Namespace) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio."""
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, progress))
    )


def compose_arrow_embeddings(model: LlamaForCausalLM, tokenizer) -> int:
    """Start every ``N>`` token's embedding as ``(emb(N) + emb('>')) / sqrt 2``.

    With the arrows tokenizer a node is written in two forms: ``57`` where an edge ends and
    ``57>`` where the next one starts. Random embeddings make the map between the forms a
    table the model must learn entry by entry before any lookup pays (a 1.2M-parameter policy
    sat on a loss plateau for 700 steps); with tied embeddings a composed start gives it for
    free: a state that carries ``57`` and ``>`` scores ``57>`` above both. (Measured: alone it
    did not shorten the plateau; a 400-step probe stayed at loss 1.48.) Returns how many rows
    were set."""
    vocab = tokenizer.get_vocab()
    table = model.get_input_embeddings().weight
    arrow = table[vocab[">"]].detach().clone()
    done = 0
    with torch.no_grad():
        for token, i in vocab.items():
            if token.endswith(">") and token[:-1].isdigit() and token[:-1] in vocab:
                table[i] = (table[vocab[token[:-1]]] + arrow) / math.sqrt(2)
                done += 1
    return done


def edge_rotation(hidden: int, seed: int) -> torch.Tensor:
    """The random rotation R that places an edge's target in its embedding (seeded)."""
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=g))
    return rotation


def edge_lookup_head_init(model: LlamaForCausalLM, tokenizer, seed: int = 0, layer: int = 0,
                          sharpness: float = 8.0) -> float:
    """Build the heads of one layer as edge lookups (after ``compose_edge_embeddings``): a step
    token ``a>b\\n`` attends to the listed edges whose source is b. Query ``A R^T x``, key
    ``A x`` (``A`` a block of a random orthogonal matrix per head, on the head's slow RoPE
    pairs only, so the match holds across the prompt), so ``q . k ~ (R e_b) R ... e_b``: the
    target part of the query token against the source part of the key. The values and outputs
    stay as they were (with ``--mimetic-init``: copies), so the attended ``b>c`` is copied and
    scores ``b>c\\n``. The query scale is set so that a match scores about ``sharpness`` after
    the 1/sqrt(head_dim) scaling. Returns the smallest head's mean (match - other edge) score
    before scaling."""
    vocab = tokenizer.get_vocab()
    table = model.get_input_embeddings().weight.detach()
    hidden = table.shape[1]
    attn = model.model.layers[layer].self_attn
    dim, heads = attn.head_dim, model.config.num_attention_heads
    rotation = edge_rotation(hidden, seed)
    g = torch.Generator().manual_seed(seed + 1)
    basis, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=g))
    slow = list(range(dim // 4, dim // 2)) + list(range(3 * dim // 4, dim))
    norm = model.model.layers[layer].input_layernorm

    def x(token: str) -> torch.Tensor:
        return norm(table[vocab[token]][None])[0]

    rng = random.Random(seed)
    pairs = []
    for _ in range(256):
        a, b, c, o, p = rng.sample(range(1, 100), 5)
        pairs.append((x(f"{a}>{b}\n"), x(f"{b}>{c}"), x(f"{o}>{p}")))
    with torch.no_grad():
        attn.q_proj.weight.zero_()
        attn.k_proj.weight.zero_()
        rows = []
        for h in range(heads):
            block = basis[(h * len(slow)) % hidden:][: len(slow)]
            rows.append(block)
            attn.k_proj.weight[[h * dim + i for i in slow]] = block
            attn.q_proj.weight[[h * dim + i for i in slow]] = block @ rotation.T
        gaps = []
        for h in range(heads):  # each head calibrated on its own (16 dims: the gap varies)
            k_w = attn.k_proj.weight[h * dim : (h + 1) * dim]
            q_w = attn.q_proj.weight[h * dim : (h + 1) * dim]
            match = torch.stack([(q_w @ q) @ (k_w @ k) for q, k, _ in pairs]).mean()
            other = torch.stack([(q_w @ q) @ (k_w @ o) for q, _, o in pairs]).mean()
            gaps.append((match - other).item())
            q_w.mul_(sharpness * math.sqrt(dim) / max(gaps[-1], 1e-6))
    return min(gaps)


def compose_edge_embeddings(model: LlamaForCausalLM, tokenizer, seed: int = 0,
                            scale: float = 1.0, step_gain: float | None = None) -> int:
    """Start every edge token's embedding from its labels': ``a>b`` as
    ``(emb(a) + R emb(b)) / sqrt 2`` and the step ``a>b\\n`` as
    ``(emb(a) + R emb(b) + emb('\\n')) / sqrt 3``, with one random rotation ``R`` (seeded) that
    keeps source and target apart. Following an edge from the step just written (``a>b\\n``)
    to the listed ``b>c`` is then one map, the same for every label (``R emb(b)`` in the query
    against ``emb(b)`` in the key), and copying ``b>c`` scores ``b>c\\n`` through the tied
    output embeddings. Labels 1..9 are characters, 10..99 number tokens. ``scale`` multiplies
    the rows: with tied embeddings a copied edge can only out-score 21,695 others by as many
    nats as its embedding's norm allows (about 2.6 at the default init's norm), and a rare
    token's norm grows slowly. ``step_gain`` (None: the form above) writes the step as
    ``(step_gain * (emb(a) + R emb(b)) + emb('\\n')) / sqrt 2``: at a gain above 1 a copied
    prompt edge scores its step form above itself through the tied embeddings (at the default
    the prompt form wins the copy, and a policy wrote a solution's last step without its
    newline, leaving the answer line off a line of its own in a third of its samples).
    Returns how many rows were set."""
    vocab = tokenizer.get_vocab()
    table = model.get_input_embeddings().weight
    rotation = edge_rotation(table.shape[1], seed)
    done = 0
    with torch.no_grad():
        base = table.detach().clone()
        newline = base[vocab["\n"]]
        for token, i in vocab.items():
            edge = edge_token(token)
            if edge is None:
                continue
            a, b, step = edge
            mixed = base[vocab[str(a)]] + rotation @ base[vocab[str(b)]]
            if not step:
                row = mixed / math.sqrt(2)
            elif step_gain is None:
                row = (mixed + newline) / math.sqrt(3)
            else:
                row = (step_gain * mixed + newline) / math.sqrt(2)
            table[i] = scale * row
            done += 1
    return done


@torch.no_grad()
def first_hop_init(model: LlamaForCausalLM, tokenizer, seed: int = 0, mark: tuple = (0, 3),
                   read: tuple = (1, 0), sharpness: float = 16.0, marker_gain: float = 0.5,
                   assistant_gain: float = 20.0) -> dict[str, float]:
    """Build the first step of a path (after ``compose_edge_embeddings`` and
    ``edge_lookup_head_init``): from ``<|assistant|>``, attend to the listed edges whose source
    is the start. The built lookup serves a step ``a>b\\n`` (it carries b); the assistant token
    carries nothing, and the start is named only in ``from 12``: two hops, which no policy here
    learned (the first step cost 4.8 nats, right 12% of the time, with every later lookup
    working). Two heads, built:

    - ``mark`` (layer, head): every label token (``1``..``99``; in a paths prompt only the start
      and the target) becomes a type direction ``t`` plus a random code of its label, and every
      listed edge ``a>b`` gains an edge type ``e`` plus the code of its source ``a``, each in
      reserved directions that every other token is projected out of. The head's query reads
      an edge's source code, its key a label's code (on the slow RoPE pairs, so distance does
      not matter): an edge whose source is a label named in the prompt attends to that label
      (the target is an arm's end, the source of no edge: only the start's edges match); an
      edge that matches nothing attends to itself (``e`` on the fastest pairs: a score that
      peaks at distance 0). Its value/output write the attended label's ``t`` as a marker
      ``w``, ``marker_gain`` strong, and the other heads of that layer write no ``w``;
    - ``read`` (a later layer, head): query the assistant token's direction (its embedding
      scaled by ``assistant_gain`` so that it survives the first layer's copies), key the
      marker minus that direction (the assistant does not read itself), on the slowest RoPE
      pair: the assistant attends to the start's edges. Its values and output stay as they
      were (with ``--mimetic-init``: a copy of what it attends to).

    The query scales are calibrated on 32 problems' prompts (prompts only). Returns the
    attention at the assistant position on the start's edges (read) and the start edges'
    attention on the start label (mark), averaged over those prompts (RoPE left out)."""
    vocab = tokenizer.get_vocab()
    table = model.get_input_embeddings().weight
    hidden = table.shape[1]
    layers = model.model.layers
    dim = layers[0].self_attn.head_dim
    g = torch.Generator().manual_seed(seed + 2)

    def rotation() -> torch.Tensor:
        q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=g))
        return q

    directions = rotation()
    match = list(range(dim // 4, dim // 2 - 1)) + list(range(3 * dim // 4, dim - 1))
    fast = list(range(4))  # the fastest RoPE pairs: a score that peaks at distance 0
    w, t, e = directions[0], directions[1], directions[2]  # marker; label type; edge type
    n = len(match)
    codes = directions[3 : 3 + n]  # where a label token holds its code
    sources = directions[3 + n : 3 + 2 * n]  # where a listed edge holds its source's code
    reserved = directions[: 3 + 2 * n]
    code = torch.nn.functional.normalize(torch.randn(100, n, generator=g), dim=-1)
    labels = torch.tensor([vocab[str(label)] for label in range(1, 100)])
    edges = [(i, found[0]) for token, i in vocab.items()
             if (found := edge_token(token)) is not None and not found[2]]
    rows_e, source = torch.tensor([i for i, _ in edges]), torch.tensor([a for _, a in edges])
    assistant = vocab[ASSISTANT]
    (lm, hm), (lr, hr) = mark, read
    ma, ra = layers[lm].self_attn, layers[lr].self_attn
    slowest = dim // 2 - 1  # the pair (dim/2 - 1, dim - 1) turns least over a prompt
    # No token has a component in the reserved subspace but what is written here: labels' type
    # and code, listed edges' type and source code, and (after the first layer) the marker.
    # So the mark head's queries are zero but at listed edges, its keys zero but at labels,
    # and the marker is its alone.
    table -= (table @ reserved.T) @ reserved
    size = table[labels].norm(dim=-1, keepdim=True)
    # a label token is its type and its code only
    table[labels] = size * (t + code[1:] @ codes)
    size = table[rows_e].norm(dim=-1, keepdim=True)
    table[rows_e] += size * (e + code[source] @ sources) / 2
    table[assistant] *= assistant_gain
    a_dir = table[assistant] / table[assistant].norm()
    rows = slice(hm * dim, (hm + 1) * dim)
    mq, mk = ma.q_proj.weight[rows], ma.k_proj.weight[rows]
    mq.zero_()
    mk.zero_()
    mq[match] = sources
    mk[match] = codes
    # an edge that matches no label attends to itself (no marker there): the sink
    mq[fast] = e
    mk[fast] = e
    ma.v_proj.weight[rows] = 0.0
    ma.v_proj.weight[hm * dim] = t
    out = ma.o_proj.weight
    out -= w[:, None] * (w @ out)[None]  # the other heads write no marker
    out[:, rows] = 0.0
    out[:, hm * dim] = marker_gain * w
    rows = slice(hr * dim, (hr + 1) * dim)
    rq, rk = ra.q_proj.weight[rows], ra.k_proj.weight[rows]
    rq.zero_()
    rk.zero_()
    rq[slowest] = a_dir
    rk[slowest] = w - a_dir  # and does not read itself

    task = get_task("paths")
    captured: dict[int, torch.Tensor] = {}
    hooks = [layers[i].input_layernorm.register_forward_hook(
        lambda _m, _i, out, i=i: captured.__setitem__(i, out[0])) for i in (lm, lr)]
    prompts = []
    for problem in task.problems(32, EVAL_SEED + 1):
        text = tokenizer.apply_chat_template([{"role": "user", "content": problem.question}],
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
        names = tokenizer.convert_ids_to_tokens(ids)
        start = [(e := edge_token(n)) is not None and e[0] == problem.path[0] and not e[2]
                 for n in names]
        prompts.append((ids, torch.tensor(start), names.index(str(problem.path[0]))))

    def run() -> list[dict[int, torch.Tensor]]:
        """One pass over the prompts: each one's normalised inputs to the two layers."""
        found = []
        for ids, _, _ in prompts:
            model(input_ids=torch.tensor([ids]), use_cache=False)
            found.append(dict(captured))
        return found

    try:
        # mark: a start edge's score on the start label against its scores on the rest, then
        # the sink (the first layer's inputs are the embeddings: one pass serves both)
        first = [c[lm] for c in run()]
        gap = 0.0
        for x, (_, st, lab) in zip(first, prompts, strict=True):
            scores = (x[st] @ mq[match].T) @ (x @ mk[match].T).T
            gap += (scores[:, lab] - scores.mean(-1)).mean().item() / len(prompts)
        mq[match] *= sharpness * math.sqrt(dim) / gap
        sink = sum(((x[st] @ mq[fast].T) * (x[st] @ mk[fast].T)).sum(-1).mean().item()
                   for x, (_, st, _) in zip(first, prompts, strict=True)) / len(prompts)
        mq[fast] *= sharpness * math.sqrt(dim) / 2 / sink
        # read: the assistant's score on the start edges against the rest. The mark head is
        # final now, and the read head's own scale changes neither layer's inputs: this pass
        # also serves the measurement below.
        inputs = run()
        gap = 0.0
        for c, (_, st, _) in zip(inputs, prompts, strict=True):
            scores = (c[lr] @ rk.T) @ (c[lr][-1] @ rq.T)
            gap += (scores[st].mean() - scores[~st].mean()).item() / len(prompts)
        rq.mul_(sharpness * math.sqrt(dim) / gap)
        found = {"mark": 0.0, "read": 0.0}
        for c, (_, st, lab) in zip(inputs, prompts, strict=True):
            x, m = c[lr], c[lm]
            score = ((x @ rk.T) @ (x[-1] @ rq.T)) / math.sqrt(dim)
            found["read"] += score.softmax(-1)[st].sum().item()
            own = ((m[st] @ mq.T) @ (m @ mk.T).T) / math.sqrt(dim)
            causal = torch.arange(len(m))[None] <= torch.nonzero(st)[:, :1]
            own = own.masked_fill(~causal, -math.inf)
            found["mark"] += own.softmax(-1)[:, lab].mean().item()
    finally:
        for hook in hooks:
            hook.remove()
    return {k: v / len(prompts) for k, v in found.items()}


def mimetic_attention_init(model: LlamaForCausalLM, qk: float = 1.0, vo: float = 1.0,
                           layers: int | None = None) -> None:
    """Mimetic initialisation of every attention layer (Trockman & Kolter, 2023): ``W_k = W_q``
    so that a head starts out attending to tokens like the current one, and ``W_o = W_v^T``
    (rescaled) so that ``W_o W_v`` is near ``vo * I`` and a head starts out *copying* what it
    attends to. With tied embeddings that copy raises the logits of the attended tokens, so
    copying a label from the prompt pays from the first step instead of after a long plateau
    (a 1.3M-parameter paths policy sat at the unigram loss on labels, 4.65 nats, for 300+
    steps with the default init)."""
    with torch.no_grad():
        for layer in model.model.layers[:layers]:  # layers: only the first N (None: all)
            attn = layer.self_attn
            hidden = attn.q_proj.weight.shape[1]
            q = torch.randn_like(attn.q_proj.weight) / math.sqrt(hidden) * qk
            attn.q_proj.weight.copy_(q)
            attn.k_proj.weight.copy_(q[: attn.k_proj.weight.shape[0]])
            v = torch.randn_like(attn.v_proj.weight) / math.sqrt(hidden)
            attn.v_proj.weight.copy_(v)
            # W_o W_v = vo * (about I) at vo = 1 copies the RMS-normalised tokens, O(1) per
            # dimension, far above the embeddings' std 0.02: the copy dominates the logits at
            # once. (At vo = 0.05, the embeddings' own scale, a paths policy sat on the
            # unigram plateau for 450 steps, as with no mimetic init at all.)
            attn.o_proj.weight.copy_(v.T * vo)


def previous_token_head_init(model: LlamaForCausalLM, seed: int = 0, freqs: int = 3,
                             sharpness: float = 20.0, shared: float = 0.5,
                             out: float = 1.0) -> None:
    """Build head 0 of layer 0 as a previous-token head, the first half of an induction circuit.

    Following an edge listed in the prompt means "find where the current node was written as
    a source, copy what came after it": keys must carry their previous token. Learned from
    scratch, that head forms only after a long plateau (a paths policy trained 2000 steps
    copied labels from the prompt uniformly and had learned no lookup: 3.4 nats on the middle
    node, a uniform pick among the prompt's labels 2.1). Here it is built instead:

    - every token embedding gets a shared component ``shared * u`` (a constant direction, which
      changes no softmax over the tied output embeddings), so after RMSNorm every position
      carries about the same vector along ``u``;
    - the head's query and key read only ``u``, on the ``freqs`` fastest RoPE pairs, the key
      rotated one position ahead: ``q . k`` peaks at a distance of exactly one token;
    - its values and output are independent random maps, so the previous token is written
      into the residual stream in another basis than the token itself.

    The later layers then only have to learn the second half (query: this token; key: the
    previous-token basis). Measured: the head holds (0.97 of its attention one token back at
    init), but a paths policy with it had still learned no lookup after 800 steps (loss 0.224,
    against 0.201 without it at that step): the second half is not the quick step hoped for."""
    g = torch.Generator().manual_seed(seed)
    table = model.get_input_embeddings().weight
    attn = model.model.layers[0].self_attn
    hidden, dim = table.shape[1], attn.head_dim
    inv_freq = model.model.rotary_emb.inv_freq.float()
    with torch.no_grad():
        u = torch.randn(hidden, generator=g)
        u /= u.norm()
        table += shared * u
        normed = table / table.pow(2).mean(-1, keepdim=True).sqrt()
        along = (normed @ u).mean().item()  # u's coordinate after the input RMSNorm
        amp = math.sqrt(sharpness * math.sqrt(dim) / freqs) / along
        for w in (attn.q_proj.weight, attn.k_proj.weight):
            w[:dim].zero_()
        for i in range(freqs):
            theta = inv_freq[i].item()
            attn.q_proj.weight[i] = amp * u
            attn.k_proj.weight[i] = amp * math.cos(theta) * u
            attn.k_proj.weight[i + dim // 2] = amp * math.sin(theta) * u
        attn.v_proj.weight[:dim] = torch.randn(dim, hidden, generator=g) / math.sqrt(hidden)
        attn.o_proj.weight[:, :dim] = torch.randn(hidden, dim, generator=g) / math.sqrt(dim) * out


def answer_loss(model: LlamaForCausalLM, ids: torch.Tensor, labels: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
    """The causal LM loss (mean over labelled tokens), projecting onto the vocabulary only the
    positions that have a label: the same value as ``model(..., labels=labels).loss``, several
    times cheaper when the vocabulary is large and most tokens are prompt (the edges tokenizer:
    21,696 tokens; a full projection made a step 2.8 s instead of about 1 s)."""
    hidden = model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


class _Listed:
    """A ``Stream`` over a fixed list of problems (``make_example`` reads rng, task, next)."""

    def __init__(self, task, problems: list) -> None:
        self.task, self.rng, self._problems = task, random.Random(0), iter(problems)

    def next(self):
        return next(self._problems)


class HeldOutLoss:
    """Loss on the answers of the first ``count`` held-out problems (no system message, no
    earlier turn), split into label tokens (a number or ``N>``) and the rest: a policy that
    has learned the format but no lookup sits near ln 99 on labels while the rest is near 0."""

    def __init__(self, task, tokenizer, args: argparse.Namespace, count: int = 64) -> None:
        plain = argparse.Namespace(**{**vars(args), "system_frac": 0.0, "multiturn_frac": 0.0,
                                      "prompt_loss": False})
        stream = _Listed(task, task.problems(count, EVAL_SEED))
        examples = [make_example(stream, tokenizer, plain) for _ in range(count)]
        self.ids, self.labels, self.positions = pack(examples, args.pack_len,
                                                     tokenizer.pad_token_id)
        names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.is_label = torch.tensor([is_label_token(t) for t in names])

    def __call__(self, model: LlamaForCausalLM) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=self.ids, position_ids=self.positions,
                           use_cache=False).logits[:, :-1]
        model.train()
        target = self.labels[:, 1:]
        keep = target != IGNORE
        loss = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="none")
        label = self.is_label[target[keep]]
        # the first answer token: the first labelled position after an unlabelled one
        before = torch.nn.functional.pad(target[:, :-1], (1, 0), value=IGNORE)
        first = (before == IGNORE)[keep]
        return {"answer": loss.mean().item(), "labels": loss[label].mean().item(),
                "other": loss[~label].mean().item(), "first": loss[first].mean().item()}


def _training_config(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, "training_config.json")) as f:
            return json.load(f)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = get_task(args.task)
    excluded = held_out_questions(task, args.exclude_eval)
    # the training data stream (passk and evaluate use other seeds)
    stream = Stream(task, random.Random(args.seed), excluded)

    # --- tokenizer and a fresh model (or --init's, to train on) -----------------------------
    if args.init:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.init)
        vocab = tokenizer.get_vocab()
        kind = "edges" if "12>3" in vocab else "arrows" if "12>" in vocab else (
            "numbers" if "12" in vocab else "char")
    else:
        kind = args.tokenizer
        if kind == "auto":
            kind = {"arith": "char", "paths": "arrows"}.get(task.name, "numbers")
        tokenizer = build_tokenizer(model_max_length=args.max_position_embeddings,
                                    numbers=kind == "numbers", arrows=kind == "arrows",
                                    edges=kind == "edges")
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=args.max_position_embeddings,
        tie_word_embeddings=True,
        **special,
    )
    if args.init:
        model = LlamaForCausalLM.from_pretrained(args.init, dtype=torch.float32)
    else:
        model = LlamaForCausalLM(config).float()
        if args.mimetic_init:
            mimetic_attention_init(model, layers=args.mimetic_layers)
        if args.prev_token_head:
            previous_token_head_init(model, seed=args.seed)
        if kind in ("arrows", "edges") and args.arrow_init == "compose":
            composed = compose_arrow_embeddings(model, tokenizer)
            print(f"arrow tokens composed from their parts: {composed}")
        if kind == "edges":
            composed = compose_edge_embeddings(model, tokenizer, seed=args.seed,
                                               scale=args.edge_scale, step_gain=args.step_gain)
            print(f"edge tokens composed from their labels: {composed}")
            if args.edge_lookup_head:
                gap = edge_lookup_head_init(model, tokenizer, seed=args.seed)
                print(f"layer 0 built as edge lookups (smallest raw match gap {gap:.2f})")
            if args.first_hop:
                found = first_hop_init(model, tokenizer, seed=args.seed)
                print("first step built: the start's edges hold "
                      f"{found['read']:.2f} of the assistant's read head, the start label "
                      f"{found['mark']:.2f} of their mark head")
    # Only the token ids: vLLM applies generation_config.json sampling fields as request defaults.
    model.generation_config = GenerationConfig(**special)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}")

    # --- optimisation ------------------------------------------------------------------------
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, args.beta2), weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, args))
    model.train()
    start = time.time()
    smooth = None
    held_out = HeldOutLoss(task, tokenizer, args) if args.eval_every > 0 else None
    bar = tqdm(range(args.steps), desc="sft", disable=args.no_progress, mininterval=2.0)
    for step in bar:
        examples = [make_example(stream, tokenizer, args) for _ in range(args.batch_size)]
        ids, labels, positions = pack(examples, args.pack_len, tokenizer.pad_token_id)
        if kind == "edges":
            loss = answer_loss(model, ids, labels, positions)
        else:
            # use_cache=False: with a cache, transformers would not detect the packing (see pack).
            loss = model(input_ids=ids, position_ids=positions, labels=labels,
                         use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        scheduler.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if args.no_progress and (step % 100 == 0 or step == args.steps - 1):
            print(
                f"step {step:5d}  loss {smooth:.4f}  lr {scheduler.get_last_lr()[0]:.2e}",
                flush=True,
            )
        if held_out is not None and (step % args.eval_every == 0 or step == args.steps - 1):
            found = held_out(model)
            print(f"held-out step {step:5d}  " + "  ".join(f"{k} {v:.3f}" for k, v in
                                                          found.items()), flush=True)
    wall = time.time() - start
    print(f"trained {args.steps} steps in {wall:.0f} s; final smoothed loss {smooth:.4f}")
    repeat = stream.skipped / max(1, stream.drawn)
    print(f"held-out prompts skipped: {stream.skipped} of {stream.drawn} draws ({repeat:.2%})")

    # --- save ----------------------------------------------------------------------------------
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    save_tokenizer(tokenizer, args.out)
    with open(os.path.join(args.out, "training_config.json"), "w") as f:
        record = {
            "command": "python -m verifier_training sft",
            "init_training_config": _training_config(args.init) if args.init else None,
            "flags": vars(args),
            "model": {
                "class": "LlamaForCausalLM",
                "parameters": n_params,
                "vocab_size": len(tokenizer),
                "tokenizer": kind,
            },
            "data": {
                "task": task.name,
                "problems_drawn": stream.drawn,
                "held_out_prompts_skipped": stream.skipped,
                "held_out_repeat_rate": round(repeat, 5),
            },
            "result": {
                "final_smoothed_loss": round(smooth, 5),
                "train_seconds": round(wall, 1),
                "torch": torch.__version__,
            },
        }
        json.dump(record, f, indent=2)
        f.write("\n")
    for name in os.listdir(args.out):  # safetensors writes 0600; a shipped model must be readable
        os.chmod(os.path.join(args.out, name), 0o644)

    # --- one greedy sample as a sanity check -------------------------------------------------
    problem = task.sample(random.Random(args.seed + 1_000_003))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.question}], tokenize=False, add_generation_prompt=True
    )
    x = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        out = model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=128, do_sample=False
        )
    text = tokenizer.decode(out[0, x.shape[1] :], skip_special_tokens=True)
    print(
        f"sample: {problem.question}\n{text}\n"
        f"(correct: {task.check(problem, text)}, answer {problem.answer})"
    )
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
