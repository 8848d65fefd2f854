"""Train a world's policy by supervised fine-tuning on reference solutions.

    python -m verifier_training sft --out bon_server/embedded/arith-policy
    python -m verifier_training sft --task countdown --init DIR --seed 1 --out DIR2

Every training example is a freshly generated problem rendered with the chat template, then
its reference solution and ``<|end|>``; the loss covers only assistant answers. Some examples
carry a short system message, some an earlier user/assistant turn (another problem with its
solution, also trained on), so the model stays sane under system prompts and multi-turn
chats. Each step's examples are packed into rows with attention kept within each example
(``chats``). The defaults below are the flags that produced the shipped model in
``bon_server/embedded/arith-policy``; each shipped policy's ``training_config.json`` holds
its own. The run is seeded and reproducible on the same torch version and thread count.

The model is a fresh ``LlamaForCausalLM`` of the given shape (``--mimetic-init``: attention
started as copiers), or ``--base``'s (alias ``--init``) weights and tokenizer, trained
further: any Hugging Face causal LM whose chat template renders the task's chats. (The
shipped paths policy started from hand-built weights: ``python -m verifier_training.research
paths-init`` writes them, then this command trains them with ``--init``.)

Training runs on ``transformers.Trainer`` (``PolicyTrainer``: the causal LM loss over the
labelled tokens of each step's packed rows; the rails are ``trainer``'s), which brings
``--grad-accum``, checkpoints (``--save-steps``, ``--resume``), ``--bf16``, ``--lora`` and
``accelerate launch``. Not TRL's ``SFTTrainer``: it packs and normalises a tokenized dataset
its own way, while here every step draws fresh problems, packs them first-fit with restarting
position ids and averages the loss over that step's labelled tokens (``answer_loss`` projects
only those onto the vocabulary), which keeps the weights of the hand-written loop it
replaced.

Evaluation problems are kept out of training by prompt: the first ``--exclude-eval``
problems of the held-out stream (seed 1234, what ``passk``, ``sample`` and ``evaluate``
draw from) are skipped when they come up, and the run reports how often that happened.

The output is a Hugging Face model directory (``LlamaForCausalLM``, float32 safetensors,
the tokenizer with its chat template) plus ``training_config.json`` with every resolved flag.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
from typing import Any

# When another process also wants the cores (a vLLM engine, another training), busy-waiting
# OpenMP threads make each step several times slower; sleeping waiters cost little otherwise.
# It must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

from bon_server.tasks import TASKS, get_task  # noqa: E402
from bon_server.tasks.base import HELD_OUT, Stream, held_out_questions  # noqa: E402
from verifier_training.cli import command_parser  # noqa: E402
from verifier_training.train import trainer as rails  # noqa: E402
from verifier_training.train.chats import (  # noqa: E402
    HeldOutLoss,
    add_chat_args,
    answer_loss,
    make_example,
    pack,
)
from verifier_training.train.tokenizer import build_tokenizer, save_tokenizer  # noqa: E402

TOKENIZERS = ("auto", "char", "numbers", "arrows", "edges")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags of a fresh policy: tokenizer, shape, mimetic init (``new_policy``)."""
    p.add_argument(
        "--tokenizer",
        default="auto",
        choices=TOKENIZERS,
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
        help="with --mimetic-init: only the first N layers (default: all)",
    )
    p.add_argument("--hidden-size", type=int, default=128, help="transformer width")
    p.add_argument("--layers", type=int, default=4, help="number of transformer layers")
    p.add_argument("--heads", type=int, default=4, help="number of attention heads")
    p.add_argument("--intermediate-size", type=int, default=512, help="MLP hidden width")
    p.add_argument(
        "--max-position-embeddings", type=int, default=512, help="context length of the model"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("sft", __doc__)
    p.add_argument(
        "--out", required=True, help="output model directory (created; files in it are overwritten)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the data stream and the weight init"
    )
    p.add_argument("--task", default="arith", choices=list(TASKS), help="the world to learn")
    p.add_argument(
        "--base",
        "--init",
        dest="init",
        default=None,
        metavar="MODEL",
        help="continue training this causal LM (a policy directory or any Hugging Face causal "
        "LM, local or a hub id: its tokenizer and shape; the model flags are ignored; give "
        "another --seed for fresh problems; --init is the older name)",
    )
    p.add_argument(
        "--exclude-eval",
        type=int,
        default=HELD_OUT,
        help="never train on the first N problems of the held-out stream (seed 1234)",
    )
    add_model_args(p)
    # optimisation
    p.add_argument("--steps", type=int, default=1400, help="number of optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="examples per step")
    p.add_argument(
        "--warmup-steps", type=int, default=100, help="linear warmup steps before the cosine decay"
    )
    rails.add_optimizer_args(p, lr=2e-3)
    add_chat_args(p)
    rails.add_library_args(p)
    # machine
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (a plain CPU run only: not on a GPU, not under "
                        "accelerate launch)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return p.parse_args(argv)


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


def new_policy(args: argparse.Namespace, task: str) -> tuple[Any, str, LlamaForCausalLM]:
    """(tokenizer, its kind, a fresh float32 model) from ``add_model_args``' flags. Draws
    from torch's global generator: seed it first."""
    kind = args.tokenizer
    if kind == "auto":
        kind = {"arith": "char", "paths": "arrows"}.get(task, "numbers")
    tokenizer = build_tokenizer(model_max_length=args.max_position_embeddings,
                                numbers=kind == "numbers", arrows=kind == "arrows",
                                edges=kind == "edges")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=args.max_position_embeddings,
        tie_word_embeddings=True,
        **special_ids(tokenizer),
    )
    model = LlamaForCausalLM(config).float()
    if args.mimetic_init:
        mimetic_attention_init(model, layers=args.mimetic_layers)
    return tokenizer, kind, model


def load_policy(directory: str) -> tuple[Any, str, Any]:
    """(tokenizer, its kind, model) of a causal LM directory (or hub id), to train further."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab = tokenizer.get_vocab()
    kind = "edges" if "12>3" in vocab else "arrows" if "12>" in vocab else (
        "numbers" if "12" in vocab else "char")
    return tokenizer, kind, AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)


def collate(examples: list[tuple[list[int], list[int]]], width: int, pad_id: int) -> dict:
    """A step's examples packed into rows (``chats.pack``)."""
    ids, labels, positions = pack(examples, width, pad_id)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


class PolicyTrainer(rails.RailsTrainer):
    """The causal LM loss, mean over the labelled tokens of the packed rows (``answer_loss``,
    which projects only those onto the vocabulary, when ``answer_only`` and the model is not
    wrapped for distributed training: its forward must go through the wrapper)."""

    def __init__(self, *a: Any, answer_only: bool = False, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.answer_only = answer_only

    def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        ids, labels, positions = inputs["input_ids"], inputs["labels"], inputs["position_ids"]
        if self.answer_only and model is self.model:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            loss = answer_loss(base, ids, labels, positions)
        else:
            # use_cache=False: with a cache, transformers would not detect the packing (see pack)
            loss = model(input_ids=ids, position_ids=positions, labels=labels,
                         use_cache=False).loss
        return (loss, None) if return_outputs else loss


class HeldOutLines(rails.TrainerCallback):
    """``HeldOutLoss`` every ``--eval-every`` steps and at the last, printed."""

    def __init__(self, held_out: HeldOutLoss, every: int, trainer: Any) -> None:
        self.held_out, self.every, self.trainer = held_out, every, trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step - 1
        if step % self.every == 0 or state.global_step == state.max_steps:
            found = self.held_out(self.trainer.model)
            if self.trainer.is_world_process_zero():
                print(f"held-out step {step:5d}  " + "  ".join(
                    f"{k} {v:.3f}" for k, v in found.items()), flush=True)


def special_ids(tokenizer: Any) -> dict[str, int]:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def training_config(directory: str) -> dict | None:
    """A model directory's ``training_config.json`` (None: it has none)."""
    try:
        with open(os.path.join(directory, "training_config.json")) as f:
            return json.load(f)
    except OSError:
        return None


def save_policy(model: LlamaForCausalLM, tokenizer: Any, out: str, record: dict) -> None:
    """Weights, tokenizer, generation config (token ids only), ``training_config.json``."""
    # Only the token ids: vLLM applies generation_config.json sampling fields as request defaults.
    model.generation_config = GenerationConfig(**special_ids(tokenizer))
    model.eval()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    with open(os.path.join(out, "training_config.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    for name in os.listdir(out):  # safetensors writes 0600; a shipped model must be readable
        os.chmod(os.path.join(out, name), 0o644)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rails.set_threads(args.threads)
    torch.manual_seed(args.seed)
    task = get_task(args.task)
    excluded = held_out_questions(task, args.exclude_eval)
    # the training data stream (passk and evaluate use other seeds)
    stream = Stream(task, random.Random(args.seed), excluded)
    if args.init:
        tokenizer, kind, model = load_policy(args.init)
    else:
        tokenizer, kind, model = new_policy(args, task.name)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}")

    # --- optimisation ------------------------------------------------------------------------
    # Training draws nothing from torch's generator (no dropout); reseeding here still makes a
    # run from --init and one from a fresh init agree whatever building the init drew.
    torch.manual_seed(args.seed)
    held_out = HeldOutLoss(task, tokenizer, args) if args.eval_every > 0 else None
    model = rails.with_lora(model, args, "CAUSAL_LM")
    targs = rails.rails_arguments(args, args.out, args.steps, args.warmup_steps)
    count = targs.max_steps * targs.gradient_accumulation_steps * targs.world_size
    draw = lambda: [make_example(stream, tokenizer, args)  # noqa: E731
                    for _ in range(args.batch_size)]
    trainer = rails.build(
        PolicyTrainer, answer_only=kind == "edges", model=model, args=targs,
        train_dataset=rails.Batches(draw, count), processing_class=tokenizer,
        data_collator=functools.partial(collate, width=args.pack_len,
                                        pad_id=tokenizer.pad_token_id))
    progress = rails.Progress(trainer)
    if held_out is not None:
        trainer.add_callback(HeldOutLines(held_out, args.eval_every, trainer))
    rails.train(trainer, args, args.out)
    model = rails.trained_model(trainer)
    if not trainer.is_world_process_zero():
        return 0
    print(progress.summary(args.steps))
    repeat = stream.skipped / max(1, stream.drawn)
    print(f"held-out prompts skipped: {stream.skipped} of {stream.drawn} draws ({repeat:.2%})")

    save_policy(model, tokenizer, args.out, {
        "command": "python -m verifier_training sft",
        "init_training_config": training_config(args.init) if args.init else None,
        "flags": vars(args),
        "model": {"class": type(model).__name__, "parameters": n_params,
                  "vocab_size": len(tokenizer), "tokenizer": kind},
        "data": {"task": task.name, "problems_drawn": stream.drawn,
                 "held_out_prompts_skipped": stream.skipped,
                 "held_out_repeat_rate": round(repeat, 5)},
        "training": rails.library_record(args, trainer),
        "result": {"final_smoothed_loss": None if progress.smooth is None
                   else round(progress.smooth, 5),
                   "train_seconds": round(progress.seconds, 1), "torch": torch.__version__},
    })

    # --- one greedy sample as a sanity check -------------------------------------------------
    problem = task.sample(random.Random(args.seed + 1_000_003))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.question}], tokenize=False, add_generation_prompt=True
    )
    x = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)], device=model.device)
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
