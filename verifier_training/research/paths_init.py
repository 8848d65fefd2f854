"""A graph-paths policy's hand-built initial weights, saved for ``sft --init`` to train.

    python -m verifier_training.research paths-init --out runs/paths/init \\
        --mimetic-init --edge-scale 10 --step-gain 1.25 --edge-lookup-head --first-hop
    python -m verifier_training sft --task paths --init runs/paths/init \\
        --out runs/paths/policy --steps 1000 --batch-size 32 --warmup-steps 50 --eval-every 100

The first command builds ``sft``'s fresh model for the same shape flags (seeded by
``--seed``, on ``--threads``: the calibrations are matrix products whose last bits depend on
the thread count), then writes the lookups of ``heads`` into it, in this order: mimetic
attention, previous-token head, composed ``N>`` embeddings, composed edge embeddings, the
edge lookup layer, the first hop. These are the weights the shipped ``paths-policy`` started
from (its ``training_config.json`` holds both commands' flags); ``tests/test_paths_init.py``
checks them against a digest of what the original in-process code built.
"""

from __future__ import annotations

import argparse

import torch

from verifier_training.cli import command_parser
from verifier_training.research import RESEARCH, heads
from verifier_training.train import sft


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("paths-init", __doc__, entry=RESEARCH)
    p.add_argument("--out", required=True, help="output model directory (files overwritten)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the weight init and of every built part (use sft's --seed)")
    sft.add_model_args(p)
    p.set_defaults(tokenizer="edges")
    p.add_argument(
        "--prev-token-head", action="store_true",
        help="build head 0 of layer 0 as a previous-token head (RoPE-aligned, on a shared "
        "embedding direction): the first half of an induction circuit, which a tiny model "
        "otherwise finds only after a long plateau")
    p.add_argument(
        "--arrow-init", default="compose", choices=("compose", "random"),
        help="arrows and edges tokenizers: start each 'N>' embedding as (emb(N) + emb('>')) / "
        "sqrt 2 (compose), so that writing the node just reached as the next step's 'N>' is "
        "not a 99-entry table to learn from scratch; random: like every other token")
    p.add_argument(
        "--edge-scale", type=float, default=1.0,
        help="edges tokenizer only: multiply the composed edge embeddings by this (their norm "
        "bounds how sharply a copied edge is predicted among 21,696 tokens)")
    p.add_argument(
        "--step-gain", type=float, default=None,
        help="edges tokenizer only: compose a step 'a>b\\n' as (gain * (emb(a) + R emb(b)) + "
        "emb('\\n')) / sqrt 2, so that above 1 a copied prompt edge scores its step form first "
        "(default: the older (emb(a) + R emb(b) + emb('\\n')) / sqrt 3, where the prompt form "
        "wins and a third of samples lost the answer line's newline)")
    p.add_argument(
        "--edge-lookup-head", action="store_true",
        help="edges tokenizer only: build layer 0's attention as edge lookups (a step 'a>b\\n' "
        "attends to the listed edges 'b>c'). With --mimetic-layers 1 the later layers do not "
        "copy the prompt's copy of the step just written over the lookup")
    p.add_argument(
        "--first-hop", action="store_true",
        help="with --edge-lookup-head: also build the first step (the assistant token attends "
        "to the listed edges whose source is the start)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (the built weights' last bits depend on it)")
    args = p.parse_args(argv)
    edges_only = [f for f in ("edge_lookup_head", "first_hop") if getattr(args, f)]
    if args.tokenizer != "edges" and (edges_only or args.edge_scale != 1.0 or args.step_gain):
        p.error("--edge-scale, --step-gain, --edge-lookup-head and --first-hop need the edges "
                "tokenizer")
    if args.first_hop and not args.edge_lookup_head:
        p.error("--first-hop builds on --edge-lookup-head")
    return args


def build(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(tokenizer, tokenizer kind, model): ``sft``'s fresh paths model with the built parts."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer, kind, model = sft.new_policy(args, "paths")
    if args.prev_token_head:
        heads.previous_token_head_init(model, seed=args.seed)
    if kind in ("arrows", "edges") and args.arrow_init == "compose":
        composed = heads.compose_arrow_embeddings(model, tokenizer)
        print(f"arrow tokens composed from their parts: {composed}")
    if kind == "edges":
        composed = heads.compose_edge_embeddings(model, tokenizer, seed=args.seed,
                                                 scale=args.edge_scale, step_gain=args.step_gain)
        print(f"edge tokens composed from their labels: {composed}")
        if args.edge_lookup_head:
            gap = heads.edge_lookup_head_init(model, tokenizer, seed=args.seed)
            print(f"layer 0 built as edge lookups (smallest raw match gap {gap:.2f})")
        if args.first_hop:
            found = heads.first_hop_init(model, tokenizer, seed=args.seed)
            print("first step built: the start's edges hold "
                  f"{found['read']:.2f} of the assistant's read head, the start label "
                  f"{found['mark']:.2f} of their mark head")
    return tokenizer, kind, model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tokenizer, kind, model = build(args)
    n_params = sum(p.numel() for p in model.parameters())
    sft.save_policy(model, tokenizer, args.out, {
        "command": "python -m verifier_training.research paths-init",
        "flags": vars(args),
        "model": {"class": "LlamaForCausalLM", "parameters": n_params,
                  "vocab_size": len(tokenizer), "tokenizer": kind, "trained": False},
        "data": {"task": "paths"},
        "result": {"torch": torch.__version__},
    })
    print(f"model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}; saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
