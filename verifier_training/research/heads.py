"""Hand-built initial weights for a graph-paths policy: the lookups a tiny model did not find.

A paths answer is a chain of lookups ("the node after ``57>`` in the prompt"). Policies trained
from a random (or mimetic) init sat on a plateau, copying labels from the prompt uniformly;
these functions write the lookups into the weights instead, and SFT trains from there:

- ``compose_arrow_embeddings`` (arrows tokenizer): each ``N>`` starts as ``emb(N) + emb('>')``;
- ``compose_edge_embeddings`` (edges tokenizer): each edge ``a>b`` and step ``a>b\\n`` starts
  from its labels' embeddings, the target through one seeded rotation (``edge_rotation``);
- ``edge_lookup_head_init``: layer 0's heads as edge lookups (a step ``a>b\\n`` attends to
  the listed ``b>c``);
- ``first_hop_init``: the first step (the assistant token attends to the start's edges);
- ``previous_token_head_init``: a previous-token head (tried; it did not pay).

``paths_init`` applies them in a fixed order to a fresh ``sft`` model; the shipped
``paths-policy`` started from them (its ``training_config.json`` has the flags). Nothing here
trains: each function edits weights in place, some calibrated on a few prompts.
"""

from __future__ import annotations

import math
import random

import torch
from transformers import LlamaForCausalLM

from bon_server.tasks import get_task
from bon_server.tasks.base import EVAL_SEED
from verifier_training.train.tokenizer import ASSISTANT, edge_token


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
