"""The remote verifier: the text laid out here, the model on a vLLM pooling server.

``httpx.MockTransport`` tests pin what is sent (token ids, batching, the task) and how
replies are read (STEP poolers, failures); the ``engine`` tests check that a real vLLM
pooling server gives the in-process ORMScorer's and PRMScorer's scores, to 1e-4, on
texts that need truncation or have nothing to score.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import build_tiny_orm
from tiny_models import step_tokenizer
from upstream_servers import build_tiny_prm, closed_port, vllm_servers, workdir

from bon_server.config import Settings
from bon_server.errors import ServiceUnavailableError, UpstreamError
from bon_server.scorers import build_scorer
from bon_server.scorers.remote import RemoteORMScorer, RemotePRMScorer
from bon_server.scorers.steps import STEP_FORMATS, encode_steps, split_steps
from bon_server.types import Candidate, Message, Prompt
from verifier_training.train.tokenizer import build_tokenizer

PROMPT = Prompt(messages=(Message("user", "What is 2 + 3 * 4?"),))
TEXTS = [
    "3 * 4 = 12\n2 + 12 = 14\nThe answer is 14.",
    "2 + 3 = 5\nThe answer is 20.",
    "",  # nothing to score: 0 for a PRM
    "3 * 4 = 12\n" * 60 + "The answer is 14.",  # longer than the 512-token context
]


def cands(texts=TEXTS) -> list[Candidate]:
    return [Candidate(t, (0,), None, "stop") for t in texts]


def serve(requests: list[dict[str, Any]], reply) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "v", "max_model_len": 512}]})
        body = json.loads(request.content)
        requests.append({"path": request.url.path, **body})
        return reply(body)

    return httpx.MockTransport(handler)


@pytest.fixture(scope="module")
def models(pytestconfig) -> dict[str, Path]:
    root = workdir(pytestconfig) / "unit-models"
    return {
        "orm": build_tiny_orm(root / "orm", num_labels=2),
        "prm": build_tiny_prm(root / "prm"),
    }


def scorer(kind: str, path: Path, transport, **settings: Any):
    s = Settings(
        verifier=str(path),
        verifier_kind=kind,
        verifier_url="http://verifier.test:8000/v1",
        upstream_retries=0,
        **settings,
    )
    cls = RemoteORMScorer if kind == "orm" else RemotePRMScorer
    return cls.from_settings(s, transport=transport)


def score(s, texts=TEXTS, aggregation=None) -> list[float]:
    async def go():
        try:
            return await s.score(PROMPT, cands(texts), aggregation)
        finally:
            await s.aclose()

    return asyncio.run(go())


def test_orm_sends_token_ids_in_batches_and_reads_label_1(models):
    sent: list[dict[str, Any]] = []

    def reply(body):
        rows = [{"index": i, "probs": [0.25, 0.75 + i / 100]} for i in range(len(body["input"]))]
        return httpx.Response(200, json={"data": rows[::-1]})  # any order: by index

    s = scorer("orm", models["orm"], serve(sent, reply), verifier_batch_size=3)
    assert score(s) == pytest.approx([0.75, 0.76, 0.77, 0.75])
    assert [r["path"] for r in sent] == ["/classify", "/classify"]  # 4 texts, batches of 3
    assert [len(r["input"]) for r in sent] == [3, 1]
    assert sent[0]["model"] == "v" and sent[0]["use_activation"] is True
    tok = build_tokenizer()
    ids = sent[0]["input"][0]
    assert all(isinstance(t, int) for t in ids)
    assert tok.decode(ids) == (
        "<|bos|><|user|>What is 2 + 3 * 4?<|end|><|assistant|>" + TEXTS[0] + "<|end|>"
    )
    assert len(sent[1]["input"][0]) == 512  # truncated from the left, the answer kept
    assert tok.decode(sent[1]["input"][0]).endswith("The answer is 14.<|end|>")


def test_prm_sends_the_step_formatters_ids_and_reads_the_tag_rows(models):
    sent: list[dict[str, Any]] = []
    tok = step_tokenizer("bon")

    def reply(body):
        rows = []
        for i, ids in enumerate(body["input"]):
            rows.append({"index": i, "data": [[0.1, 0.9 - p / 1000] for p in range(len(ids))]})
        return httpx.Response(200, json={"data": rows})

    s = scorer("prm", models["prm"], serve(sent, reply))
    steps = asyncio.run(_steps(s))
    (request,) = sent
    assert request["path"] == "/pooling" and request["task"] == "token_classify"
    assert len(request["input"]) == 3  # the empty candidate is not sent
    ids, positions = encode_steps(STEP_FORMATS["bon"], tok, PROMPT, split_steps(TEXTS[0]))
    assert request["input"][0] == ids
    assert steps[0] == pytest.approx([0.9 - p / 1000 for p in positions])
    assert steps[2] == [] and len(steps[3]) < 61  # the cut steps are gone
    assert len(request["input"][2]) == 512


async def _steps(s):
    try:
        return await s.step_scores(PROMPT, cands())
    finally:
        await s.aclose()


def test_prm_reads_a_step_pooler_that_returns_only_tag_rows(models):
    tok = step_tokenizer("bon")
    tag = tok.convert_tokens_to_ids("<|step|>")

    def reply(body):
        rows = []
        for i, ids in enumerate(body["input"]):
            tags = [p for p, t in enumerate(ids) if t == tag]
            rows.append({"index": i, "data": [[0.5, k / 10] for k in range(len(tags))]})
        return httpx.Response(200, json={"data": rows})

    s = scorer("prm", models["prm"], serve([], reply))
    assert score(s, TEXTS[:2], "last") == pytest.approx([0.2, 0.1])


def test_failures_are_503_when_unreachable_502_when_refused(models):
    dead = f"http://127.0.0.1:{closed_port()}"
    s = RemoteORMScorer.from_settings(
        Settings(verifier=str(models["orm"]), verifier_url=dead, upstream_retries=0)
    )
    with pytest.raises(ServiceUnavailableError, match="verifier"):
        score(s)
    refuse = serve([], lambda body: httpx.Response(400, json={"error": {"message": "no"}}))
    with pytest.raises(UpstreamError, match="verifier refused the request"):
        score(scorer("orm", models["orm"], refuse))
    short = serve([], lambda body: httpx.Response(200, json={"data": []}))
    with pytest.raises(UpstreamError, match="scored 0 of 4"):
        score(scorer("orm", models["orm"], short))
    generative = serve([], lambda body: httpx.Response(200, json={"data": [{"index": 0}]}))
    with pytest.raises(UpstreamError):
        score(scorer("prm", models["prm"], generative), TEXTS[:1])


def test_a_malformed_verifier_reply_is_502(models):
    text_probs = serve(
        [],
        lambda body: httpx.Response(
            200, json={"data": [{"index": i, "probs": ["x", "y"]} for i in range(4)]}
        ),
    )
    with pytest.raises(UpstreamError, match="class probabilities"):
        score(scorer("orm", models["orm"], text_probs))
    not_rows = serve([], lambda body: httpx.Response(200, json={"data": [[0.1, 0.9]]}))
    with pytest.raises(UpstreamError):
        score(scorer("orm", models["orm"], not_rows))
    text_rows = serve(
        [],
        lambda body: httpx.Response(
            200, json={"data": [{"index": 0, "data": [["a", "b"]] * len(body["input"][0])}]}
        ),
    )
    with pytest.raises(UpstreamError, match="two-class"):
        score(scorer("prm", models["prm"], text_rows), TEXTS[:1])


def test_one_failed_batch_cancels_its_siblings_and_raises_one_error(models):
    """4 texts in 4 parallel calls: the first fails, the 3 others are cancelled at once."""
    arrived: list[int] = []
    cancelled: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "v", "max_model_len": 512}]})
        arrived.append(len(arrived))
        if len(arrived) == 1:
            await asyncio.sleep(0.05)  # the siblings are sent meanwhile
            return httpx.Response(400, json={"error": {"message": "no"}})
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(len(arrived))
            raise
        return httpx.Response(200, json={"data": []})

    s = scorer("orm", models["orm"], httpx.MockTransport(handler), verifier_batch_size=1)

    async def go():
        try:
            start = time.monotonic()
            with pytest.raises(UpstreamError, match="verifier refused") as info:
                await s.score(PROMPT, cands())
            # checked before asyncio.run would cancel leftovers itself
            return info.value, len(cancelled), time.monotonic() - start
        finally:
            await s.aclose()

    error, n_cancelled, elapsed = asyncio.run(go())
    assert type(error) is UpstreamError and error.status_code == 502  # not an ExceptionGroup
    assert len(arrived) == 4 and n_cancelled == 3
    assert elapsed < 5


@pytest.mark.parametrize("kind", ["orm", "prm"])
def test_templates_and_tokenization_run_off_the_event_loop(models, kind):
    threads: list[bool] = []

    def reply(body):
        rows = [
            {"index": i, "probs": [0.5, 0.5], "data": [[0.5, 0.5]] * len(ids)}
            for i, ids in enumerate(body["input"])
        ]
        return httpx.Response(200, json={"data": rows})

    s = scorer(kind, models[kind], serve([], reply))
    encode = s.encode

    def spy(*args):
        threads.append(threading.current_thread() is threading.main_thread())
        return encode(*args)

    s.encode = spy
    assert len(score(s)) == len(TEXTS)
    assert threads and not any(threads)  # never on the loop's (main) thread


def test_remote_needs_the_local_tokenizer_and_a_token_head(models, tmp_path):
    with pytest.raises(ValueError, match="--verifier too"):
        build_scorer(Settings(verifier_url="http://v:8000"))
    from tiny_models import save_tiny
    from transformers import LlamaForCausalLM

    shepherd = save_tiny(LlamaForCausalLM, tmp_path / "ms", step_tokenizer("math_shepherd"))
    with pytest.raises(ValueError, match="causal LM"):
        build_scorer(
            Settings(
                verifier=str(shepherd),
                verifier_kind="prm",
                verifier_step_format="math_shepherd",
                verifier_url="http://v:8000",
            )
        )
    remote = build_scorer(
        Settings(verifier=str(models["prm"]), verifier_kind="prm", verifier_url="http://v:8000/v1")
    )
    assert isinstance(remote, RemotePRMScorer) and remote.remote.base_url == "http://v:8000"
    asyncio.run(remote.aclose())


# ------------------------------------------------- real vLLM pooling servers


@pytest.mark.engine
def test_remote_scores_equal_in_process_scores(pytestconfig):
    from bon_server.scorers.orm import ORMScorer
    from bon_server.scorers.prm import PRMScorer

    servers = vllm_servers(pytestconfig)
    orm, prm = servers["orm"], servers["prm"]
    local_orm = ORMScorer.from_pretrained(str(orm.model), device="cpu", dtype="float32")
    remote_orm = RemoteORMScorer.from_settings(
        Settings(verifier=str(orm.model), verifier_url=orm.base_url)
    )
    assert score(remote_orm) == pytest.approx(
        asyncio.run(local_orm.score(PROMPT, cands())), abs=1e-4
    )

    local_prm = PRMScorer.from_pretrained(str(prm.model), device="cpu", dtype="float32")
    remote_prm = RemotePRMScorer.from_settings(
        Settings(verifier=str(prm.model), verifier_kind="prm", verifier_url=prm.root)
    )

    async def both():
        try:
            return await asyncio.gather(
                local_prm.step_scores(PROMPT, cands()), remote_prm.step_scores(PROMPT, cands())
            )
        finally:
            await remote_prm.aclose()

    local, remote = asyncio.run(both())
    assert [len(s) for s in remote] == [len(s) for s in local]
    assert local[2] == [] and len(local[3]) > 0
    for a, b in zip(local, remote, strict=True):
        assert b == pytest.approx(a, abs=1e-4)
