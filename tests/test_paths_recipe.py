"""The graph-paths recipe: the ``edges`` tokenizer (one token per edge, one per step line), the
hand-built parts of ``paths-init`` (composed embeddings, ``--edge-scale``, the built lookup
layer, the first hop, a previous-token head), ``sft``'s ``--mimetic-layers`` and its loss on
labelled positions only, and ``sft --init`` training what ``paths-init`` built."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bon_server.tasks import get_task
from bon_server.tasks.base import Stream
from verifier_training.research import heads, paths_init
from verifier_training.train import chats, sft
from verifier_training.train.tokenizer import build_tokenizer, edge_token, is_label_token


def test_edges_tokenizer_splits_prompt_and_steps():
    tok = build_tokenizer(edges=True)
    assert len(tok) == 7 + 97 + 990 + 1000 + 2 * 99 * 99
    prompt = "Find a path from 12 to 57. Edges: 12>3, 3>57, 12>8, 8>41."
    tokens = tok.convert_ids_to_tokens(tok.encode(prompt, add_special_tokens=False))
    assert tokens[-11:] == ["12>3", ",", " ", "3>57", ",", " ", "12>8", ",", " ", "8>41", "."]
    assert "12" in tokens and "57" in tokens  # start and target stay number tokens
    answer = "12>3\n3>57\nThe answer is 12>3>57."
    tokens = tok.convert_ids_to_tokens(tok.encode(answer, add_special_tokens=False))
    assert tokens[:2] == ["12>3\n", "3>57\n"]
    assert tokens[-4:] == ["12>3", ">", "57", "."]
    # lossless on anything, edges or not
    for text in ["1>2>3>4", "12>345 5>5\n 100>3 3>100", "0>1\n99>99", prompt + answer]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert edge_token("12>3\n") == (12, 3, True) and edge_token("12>3") == (12, 3, False)
    assert edge_token("12>") is None and edge_token("123>4") is None
    assert is_label_token("12>3\n") and is_label_token("57>") and not is_label_token(">")


def tiny_model(tok) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).float()


def test_edge_embeddings_are_composed_from_their_labels():
    torch.manual_seed(0)
    tok = build_tokenizer(edges=True)
    model = tiny_model(tok)
    before = model.get_input_embeddings().weight.detach().clone()
    done = heads.compose_edge_embeddings(model, tok, seed=3, scale=5.0)
    assert done == 2 * 99 * 99
    after = model.get_input_embeddings().weight
    vocab = tok.get_vocab()
    assert torch.equal(after[vocab["57"]], before[vocab["57"]])  # labels untouched
    a, b, n = before[vocab["12"]], before[vocab["3"]], before[vocab["\n"]]
    # the same rotation R maps the target in both forms; the step adds the newline
    plain = after[vocab["12>3"]] * math.sqrt(2) / 5 - a
    step = after[vocab["12>3\n"]] * math.sqrt(3) / 5 - a - n
    assert torch.allclose(plain, step, atol=1e-5)
    assert torch.allclose(plain.norm(), b.norm(), rtol=1e-4)  # R is a rotation
    assert model.lm_head.weight.data_ptr() == after.data_ptr()  # still tied


def test_answer_loss_equals_the_models_loss():
    torch.manual_seed(0)
    tok = build_tokenizer(edges=True)
    args = sft.parse_args(["--out", "unused"])
    stream = Stream(get_task("paths"), random.Random(0), set())
    ids, labels, positions = chats.pack([chats.make_example(stream, tok, args) for _ in range(6)],
                                      128, tok.pad_token_id)
    model = tiny_model(tok)
    full = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss
    fast = chats.answer_loss(model, ids, labels, positions)
    assert torch.allclose(full, fast, atol=1e-5)


def test_paths_init_then_sft_init_smoke(tmp_path):
    init = tmp_path / "init"
    shape = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64",
             "--threads", "1"]
    assert paths_init.main(["--out", str(init), "--edge-scale", "5", "--mimetic-init",
                            "--mimetic-layers", "1", "--edge-lookup-head", *shape]) == 0
    record = json.loads((init / "training_config.json").read_text())
    assert record["model"]["tokenizer"] == "edges" and record["data"]["task"] == "paths"
    assert record["flags"]["edge_scale"] == 5.0 and record["flags"]["edge_lookup_head"]
    assert record["flags"]["mimetic_layers"] == 1
    out = tmp_path / "policy"
    assert sft.main(["--out", str(out), "--init", str(init), "--task", "paths", "--steps", "2",
                     "--batch-size", "4", "--warmup-steps", "1", "--threads", "1",
                     "--no-progress", "--eval-every", "1"]) == 0
    record = json.loads((out / "training_config.json").read_text())
    assert record["model"]["tokenizer"] == "edges"
    assert record["model"]["vocab_size"] == 7 + 97 + 990 + 1000 + 2 * 99 * 99
    assert record["init_training_config"]["command"].endswith("research paths-init")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_ids_to_tokens(tok.encode("12>3\n", add_special_tokens=False)) == ["12>3\n"]


def test_paths_init_refuses_edge_flags_without_the_edges_tokenizer(capsys):
    with pytest.raises(SystemExit):
        paths_init.parse_args(["--out", "unused", "--tokenizer", "arrows", "--edge-lookup-head"])
    assert "edges tokenizer" in capsys.readouterr().err


def test_edge_lookup_head_matches_target_to_source():
    torch.manual_seed(0)
    tok = build_tokenizer(edges=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).float()
    sft.mimetic_attention_init(model, layers=1)
    layers = model.model.layers
    assert torch.equal(layers[0].self_attn.q_proj.weight, layers[0].self_attn.k_proj.weight)
    assert not torch.equal(layers[1].self_attn.q_proj.weight, layers[1].self_attn.k_proj.weight)
    heads.compose_edge_embeddings(model, tok, seed=0, scale=10.0)
    gap = heads.edge_lookup_head_init(model, tok, seed=0)
    assert gap > 0
    attn, dim = layers[0].self_attn, layers[0].self_attn.head_dim
    fast = [i for i in range(dim) if i % (dim // 2) < dim // 4]  # fast RoPE pairs stay empty
    assert attn.q_proj.weight[fast].abs().max() == 0 == attn.k_proj.weight[fast].abs().max()
    # without RoPE: the step 12>3\n scores the listed 3>57 above the listed 8>41 and 57>3
    vocab, table = tok.get_vocab(), model.get_input_embeddings().weight.detach()
    norm = layers[0].input_layernorm

    def score(query: str, key: str) -> float:
        q = attn.q_proj.weight @ norm(table[vocab[query]][None])[0]
        k = attn.k_proj.weight @ norm(table[vocab[key]][None])[0]
        return (q[:dim] @ k[:dim]).item()

    right = score("12>3\n", "3>57")
    assert right > score("12>3\n", "8>41") and right > score("12>3\n", "57>3")


def test_step_gain_makes_a_copied_prompt_edge_score_its_step_form_first():
    tok = build_tokenizer(edges=True)
    vocab = tok.get_vocab()
    for gain, step_wins in ((None, False), (1.25, True)):
        torch.manual_seed(0)
        model = tiny_model(tok)
        heads.compose_edge_embeddings(model, tok, seed=0, scale=10.0, step_gain=gain)
        table = model.get_input_embeddings().weight.detach()
        copied = table[vocab["12>3"]]  # what a copying head writes, through tied embeddings
        step, plain = copied @ table[vocab["12>3\n"]], copied @ table[vocab["12>3"]]
        assert (step > plain) == step_wins


def test_first_hop_makes_the_assistant_read_the_starts_edges():
    torch.manual_seed(0)
    tok = build_tokenizer(edges=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
                         tie_word_embeddings=True, attn_implementation="eager")
    model = LlamaForCausalLM(config).float()
    sft.mimetic_attention_init(model)
    heads.compose_edge_embeddings(model, tok, seed=0, scale=10.0, step_gain=1.25)
    heads.edge_lookup_head_init(model, tok, seed=0)
    found = heads.first_hop_init(model, tok, seed=0)
    assert found["mark"] > 0.9 and found["read"] > 0.8
    # the real attention (RoPE, causal) on problems the calibration did not see
    vocab = tok.get_vocab()
    read_on_start, other_marked = [], []
    for problem in get_task("paths").problems(16, 7):
        text = tok.apply_chat_template([{"role": "user", "content": problem.question}],
                                       tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        names = tok.convert_ids_to_tokens(ids)
        with torch.no_grad():
            attentions = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
        start = [i for i, n in enumerate(names)
                 if (e := edge_token(n)) is not None and e[0] == problem.path[0]]
        others = [i for i, n in enumerate(names)
                  if (e := edge_token(n)) is not None and e[0] != problem.path[0]]
        start_label = names.index(str(problem.path[0]))
        mark = attentions[0][0, 3]
        assert all(mark[i, start_label] > 0.9 for i in start)
        other_marked += [mark[i, start_label].item() for i in others]
        read_on_start.append(attentions[1][0, 0, -1, start].sum().item())
        assert vocab["<|assistant|>"] == ids[-1]
    assert sum(read_on_start) / len(read_on_start) > 0.8
    assert sum(other_marked) / len(other_marked) < 0.2


def test_arrow_tokens_start_composed_from_their_parts():
    tok = build_tokenizer(arrows=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    assert heads.compose_arrow_embeddings(model, tok) == 1000
    table, vocab = model.get_input_embeddings().weight, tok.get_vocab()
    for n in (0, 7, 57, 999):
        want = (table[vocab[str(n)]] + table[vocab[">"]]) / 2**0.5
        assert torch.allclose(table[vocab[f"{n}>"]], want)
    # tied: the output side scores the composed token too
    assert torch.equal(model.lm_head.weight[vocab["57>"]], table[vocab["57>"]])


def test_previous_token_head_attends_one_token_back_from_the_start():
    tok = build_tokenizer(arrows=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                         tie_word_embeddings=True, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    sft.mimetic_attention_init(model)
    heads.previous_token_head_init(model, seed=0)
    ids = torch.randint(7, len(tok), (2, 80))  # any ordinary tokens
    attention = model(ids, output_attentions=True).attentions
    head, other = attention[0][:, 0], attention[0][:, 1]
    back = torch.stack([head[:, i, i - 1] for i in range(1, 80)], dim=1)
    assert back.mean() > 0.9 and back.min() > 0.5
    # the other heads were left to the mimetic init: not previous-token heads
    assert torch.stack([other[:, i, i - 1] for i in range(1, 80)], dim=1).mean() < 0.5
