"""The shipped paths models' initial weights, built by the research commands, are the weights the
original in-process code built; ``sft --init`` and ``train-orm --init`` load exactly them.

The digests below were recorded at commit 31b83a7, before the hand-built heads left ``sft``
(x86_64, torch 2.13.0+cpu, transformers 5.19.0): for the paths policy, ``sft.main`` with the
flags of ``bon_server/embedded/paths-policy/training_config.json`` (``--task paths
--tokenizer edges --mimetic-init --arrow-init compose --edge-scale 10 --step-gain 1.25
--first-hop --edge-lookup-head --seed 0 --hidden-size 128 --layers 4 --heads 4 --threads 2``)
stopped where it built its optimizer, the model and tokenizer saved with ``save_pretrained``
and ``save_tokenizer``; for the paths ORM's init, ``build-checker --out DIR`` (and with
``--random-decision``). A digest is sha256 over the state dict as loaded (sorted names, each
name, dtype, shape and bytes), over the tokenizer files (sorted names and bytes), and over
config.json without ``transformers_version``. The first-hop calibration is matrix products
whose last bits depend on the thread count: the recipe's ``--threads 2`` is part of it.

Those last bits may also differ on another CPU (its BLAS kernels): where the weights' digest
differs, each tensor must still match ``data/paths_inits.json`` (its shape, sum, absolute sum
and eight values spread over it, written from the weights that met the digests above) to
float32 rounding (1e-4 of the tensor's largest value; one thread instead of two moves them by
at most 3e-6). A real change to an init moves these by far more.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaForSequenceClassification

from verifier_training.research import built_checker, paths_init
from verifier_training.train import sft

RECORDED_TORCH = "2.13.0+cpu"
FINGERPRINTS = json.loads((Path(__file__).parent / "data" / "paths_inits.json").read_text())
PATHS_POLICY_INIT = {
    "weights": "e332aa4111d94cac370e78938c1e337cf381ac5c1a1f5dbef43a8cb8f669aca6",
    "tokenizer": "0e9237f66dddfdee50de92b4e2776bb40a676fb473840677d3470c0343c150f8",
    "config": "64a4773db72b1f18a3de3396bdeb84947b1e3cd4a5d16efa69ffa26bf91a60b8",
}
PATHS_ORM_INIT = {
    "weights": "57ccf41397e309025c2fe9c9b5130d61c3677e941de5d4d9075e1e74c2a7ae23",
    "tokenizer": "c312e2b6f9ec667db4671e39596efaa332eecb2fffa6c7871aec128ce29b40b7",
    "config": "254a5583cd4aa8fff0436a191d584a55562a3c3e6c3fa75102ce1ff8f36c919a",
}
PATHS_ORM_INIT_RANDOM_DECISION = {
    **PATHS_ORM_INIT,
    "weights": "825bd83078092cc36b38645ad26db13577cb43d55732b3de71e6aaaf59e77e16",
}
RECIPE = ["--tokenizer", "edges", "--mimetic-init", "--arrow-init", "compose",
          "--edge-scale", "10", "--step-gain", "1.25", "--first-hop", "--edge-lookup-head",
          "--seed", "0", "--hidden-size", "128", "--layers", "4", "--heads", "4",
          "--threads", "2"]



def test_the_recorded_torch_is_the_pinned_one():
    # the init draws from torch's generator: another torch may draw other numbers
    assert torch.__version__ == RECORDED_TORCH


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def assert_same_weights(model, digest: str, fingerprint: dict) -> None:  # type: ignore[no-untyped-def]
    state = model.state_dict()
    if state_digest(state) == digest:
        return  # bit for bit
    assert sorted(state) == sorted(fingerprint)
    for name, want in fingerprint.items():
        t = state[name].detach().float().flatten()
        idx = torch.linspace(0, t.numel() - 1, 8).long()
        assert list(state[name].shape) == want["shape"], name
        scale = t.abs().max().item() * t.numel() ** 0.5 * 1e-5 + 1e-6
        assert abs(t.sum(dtype=torch.float64).item() - want["sum"]) < scale, name
        assert t.abs().sum(dtype=torch.float64).item() == pytest.approx(want["abs_sum"], rel=1e-5)
        tolerance = 1e-4 * t.abs().max().item() + 1e-7  # last bits of products, not a change
        assert t[idx].tolist() == pytest.approx(want["samples"], rel=1e-4, abs=tolerance), name


def directory_digests(directory: Path, model) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The three digests of a saved model directory, ``model`` being its loaded weights."""
    names = sorted(n for n in os.listdir(directory) if n.startswith("tokenizer")
                   or n.endswith(".jinja") or n in ("special_tokens_map.json",
                                                    "chat_template.json"))
    files = hashlib.sha256()
    for name in names:
        files.update(name.encode())
        files.update((directory / name).read_bytes())
    config = json.loads((directory / "config.json").read_text())
    config.pop("transformers_version", None)
    return {"weights": state_digest(model.state_dict()), "tokenizer": files.hexdigest(),
            "config": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()}


def test_paths_init_builds_the_shipped_policys_initial_weights(tmp_path, capsys):
    out = tmp_path / "init"
    assert paths_init.main(["--out", str(out), *RECIPE]) == 0
    # read back the way `sft --init` reads it: the same tensors, the edges tokenizer, whose
    # loss is answer_loss, as when the old sft built them in-process
    tokenizer, kind, model = sft.load_policy(str(out))
    assert kind == "edges" and len(tokenizer) == 21696
    found = directory_digests(out, model)
    assert {k: found[k] for k in ("tokenizer", "config")} == {
        k: PATHS_POLICY_INIT[k] for k in ("tokenizer", "config")}
    assert_same_weights(model, PATHS_POLICY_INIT["weights"], FINGERPRINTS["paths_policy_init"])
    assert "first step built" in capsys.readouterr().out
    record = json.loads((out / "training_config.json").read_text())
    assert record["data"]["task"] == "paths" and record["model"]["tokenizer"] == "edges"


@pytest.mark.parametrize("flags, recorded, key", [
    ([], PATHS_ORM_INIT, "paths_orm_init"),
    (["--random-decision"], PATHS_ORM_INIT_RANDOM_DECISION, "paths_orm_init_random_decision"),
], ids=["built", "random-decision"])
def test_build_checker_builds_the_shipped_orms_init(tmp_path, flags, recorded, key):
    out = tmp_path / "checker"
    assert built_checker.main(["--out", str(out), *flags]) == 0
    model = LlamaForSequenceClassification.from_pretrained(out, dtype=torch.float32)
    found = directory_digests(out, model)
    assert (found["tokenizer"], found["config"]) == (recorded["tokenizer"], recorded["config"])
    assert_same_weights(model, recorded["weights"], FINGERPRINTS[key])
