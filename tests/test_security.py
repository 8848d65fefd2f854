"""Security and limits (issue 6): API keys, the body bound, message and token limits.

Through the scripted app over httpx's ASGI transport (``asgi_app.py``).
"""

from __future__ import annotations

import json

import pytest
from asgi_app import (
    KEY,
    MESSAGES,
    TEXTS,
    app_with,
    chat_body,
    openai_error,
    running,
    sample,
    scenario,
)

from bon_server.config import Settings
from bon_server.generators.fake import ScriptedGenerator
from bon_server.metrics import Metrics

# ---------------------------------------------------------------------- API keys


def test_keys_guard_everything_but_health_and_metrics():
    metrics = Metrics()
    app = app_with(api_keys=(KEY, "sk-second"), metrics=metrics)

    async def run():
        async with running(app) as c:
            r = await c.post("/v1/chat/completions", json=chat_body())
            err = openai_error(r, 401)
            assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.headers["x-request-id"]
            wrong = {"Authorization": "Bearer sk-test-012345678"}  # one character short
            r = await c.post("/v1/chat/completions", json=chat_body(), headers=wrong)
            assert KEY not in openai_error(r, 401)["message"]
            for headers in ({"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
                openai_error(await c.get("/v1/models", headers=headers), 401)
            for key in (KEY, "sk-second"):
                auth = {"Authorization": f"Bearer {key}"}
                r = await c.post("/v1/chat/completions", json=chat_body(), headers=auth)
                assert r.status_code == 200, r.text
            assert (
                await c.get("/v1/models", headers={"authorization": f"bearer {KEY}"})
            ).is_success
            assert (await c.get("/health")).status_code == 200
            assert (await c.get("/metrics")).status_code == 200
            openai_error(await c.get("/openapi.json"), 401)

    scenario(run)
    assert sample(metrics, "bon_auth_failures_total") == 5


def test_metrics_can_require_a_key():
    app = app_with(api_keys=(KEY,), metrics_require_key=True)

    async def run():
        async with running(app) as c:
            openai_error(await c.get("/metrics"), 401)
            auth = {"Authorization": f"Bearer {KEY}"}
            assert (await c.get("/metrics", headers=auth)).status_code == 200
            assert (await c.get("/health")).status_code == 200

    scenario(run)


def test_no_keys_configured_means_open():
    async def run():
        async with running(app_with()) as c:
            assert (await c.post("/v1/chat/completions", json=chat_body())).status_code == 200

    scenario(run)


def test_api_keys_from_env_and_settings(monkeypatch):
    monkeypatch.setenv("BON_API_KEYS", f"{KEY}, sk-second ,")
    assert Settings().api_keys == (KEY, "sk-second")
    monkeypatch.setenv("BON_API_KEYS", json.dumps([KEY]))
    assert Settings().api_keys == (KEY,)
    monkeypatch.delenv("BON_API_KEYS")
    assert Settings(api_keys=["a", "c"]).api_keys == ("a", "c")
    assert KEY not in repr(Settings(api_keys=[KEY]))
    with pytest.raises(ValueError, match="whitespace"):
        Settings(api_keys=["two words"])


def test_openapi_declares_the_bearer_scheme_and_no_422():
    doc = app_with(api_keys=(KEY,)).openapi()
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/health"]["get"]
    assert "security" not in doc["paths"]["/metrics"]["get"]
    for item in doc["paths"].values():
        for operation in item.values():
            assert "422" not in operation["responses"]
    assert "HTTPValidationError" not in json.dumps(doc)
    assert "securitySchemes" not in app_with().openapi()["components"]


# ---------------------------------------------------------------------- limits


def test_body_over_the_limit_is_413_before_it_is_read():
    app = app_with(ScriptedGenerator(TEXTS, max_model_len=10_000), max_request_bytes=4096)
    big = chat_body(messages=[{"role": "user", "content": "x" * 5000}])

    async def chunked():
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    async def run():
        async with running(app) as c:
            err = openai_error(await c.post("/v1/chat/completions", json=big), 413)
            assert err["code"] == "payload_too_large" and "4096" in err["message"]
            r = await c.post("/v1/chat/completions", content=chunked())  # no Content-Length
            openai_error(r, 413)
            small = chat_body(messages=[{"role": "user", "content": "x" * 3000}])
            assert (await c.post("/v1/chat/completions", json=small)).status_code == 200

    scenario(run)


@pytest.mark.parametrize(
    "body, param",
    [
        (chat_body(messages=MESSAGES * 5), "messages"),
        (chat_body(messages=[{"role": "user", "content": "x" * 101}]), "messages.0.content"),
        (
            chat_body(
                messages=[
                    MESSAGES[0],
                    {"role": "user", "content": [{"type": "text", "text": "y" * 101}]},
                ]
            ),
            "messages.1.content",
        ),
        (chat_body(max_tokens=65), "max_tokens"),
        (chat_body(max_completion_tokens=65), "max_tokens"),
        (chat_body(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat_body(best_of=9), "best_of"),
        (chat_body(n=3, best_of=2), "best_of"),
        (chat_body(logit_bias={str(i): 1 for i in range(1025)}), "logit_bias"),
    ],
)
def test_chat_limits_are_400(body, param):
    gen = ScriptedGenerator(TEXTS)
    app = app_with(gen, max_messages=4, max_message_chars=100, max_tokens_limit=64, max_best_of=8)

    async def run():
        async with running(app) as c:
            for stream in (False, True):
                r = await c.post("/v1/chat/completions", json={**body, "stream": stream})
                assert openai_error(r, 400)["param"] == param

    scenario(run)
    assert gen.calls == []  # nothing reached the generator


@pytest.mark.parametrize(
    "prompt, extra",
    [
        (["a"] * 5, {}),
        ("x" * 101, {}),
        ([1] * 101, {}),
        ([[1, 2], [1] * 101], {}),
        ("ok", {"max_tokens": 65}),
    ],
)
def test_completions_limits_are_400(prompt, extra):
    gen = ScriptedGenerator(TEXTS)
    app = app_with(gen, max_messages=4, max_message_chars=100, max_tokens_limit=64)

    async def run():
        async with running(app) as c:
            r = await c.post("/v1/completions", json={"prompt": prompt, **extra})
            assert openai_error(r, 400)["param"] in ("prompt", "max_tokens")

    scenario(run)
    assert gen.calls == []


def test_a_request_larger_than_the_admission_bound_is_400():
    app = app_with(max_sequences_in_flight=8, max_best_of=8, default_best_of=4)

    async def run():
        async with running(app) as c:
            r = await c.post("/v1/completions", json={"prompt": ["a", "b", "c"], "best_of": 4})
            err = openai_error(r, 400)
            assert err["param"] == "best_of" and "12 sequences" in err["message"]
            r = await c.post("/v1/completions", json={"prompt": ["a", "b"], "best_of": 4})
            assert r.status_code == 200

    scenario(run)


def test_settings_refuse_an_admission_bound_below_max_best_of():
    with pytest.raises(ValueError, match="could never be admitted"):
        Settings(max_sequences_in_flight=16, max_best_of=64)
    assert Settings(max_sequences_in_flight=0, max_best_of=64).max_sequences_in_flight == 0


def test_keys_given_one_by_one_are_not_split_on_commas(monkeypatch):
    for value in (["abc,def"], ("abc,def", "ghi"), '["abc,def"]'):
        with pytest.raises(ValueError, match="must not contain a comma"):
            Settings(api_keys=value)
    monkeypatch.setenv("BON_API_KEYS", '["abc,def"]')
    with pytest.raises(ValueError, match="must not contain a comma"):
        Settings()
    monkeypatch.setenv("BON_API_KEYS", "abc,def")  # the one comma-separated form
    assert Settings().api_keys == ("abc", "def")


def test_backend_keys_stay_out_of_repr():
    settings = Settings(upstream_api_key="sk-upstream-x", verifier_api_key="sk-verifier-y")
    assert "sk-upstream-x" not in repr(settings) and "sk-verifier-y" not in repr(settings)
    assert "sk-upstream-x" not in str(settings)
    assert settings.upstream_api_key == "sk-upstream-x"


def test_model_card_root_hides_the_upstream_url():
    url = "http://user:s3cret@10.0.0.5:8000/v1"

    async def run():
        for settings, root in (
            ({"upstream": url, "upstream_model": "org/policy"}, "org/policy"),
            ({"upstream": url, "served_model_name": "bon"}, "bon"),
        ):
            async with running(app_with(**settings)) as c:
                for path in (
                    "/v1/models",
                    f"/v1/models/{settings.get('served_model_name', 'org/policy')}",
                ):
                    r = await c.get(path)
                    assert r.status_code == 200, r.text
                    assert "s3cret" not in r.text and "10.0.0.5" not in r.text
                    card = r.json()["data"][0] if "data" in r.json() else r.json()
                    assert card["root"] == root
        async with running(app_with(model="/models/local-policy")) as c:  # in-process: the path
            assert (await c.get("/v1/models")).json()["data"][0]["root"] == "/models/local-policy"

    scenario(run)


def test_error_bodies_are_serialised_the_same_by_middleware_and_handlers():
    async def run():
        async with running(app_with(api_keys=(KEY,))) as c:
            guard = await c.post("/v1/chat/completions", json=chat_body())  # 401, middleware
            routed = await c.post(  # 404 unknown model, BonError handler
                "/v1/chat/completions",
                json=chat_body(model="nope"),
                headers={"Authorization": f"Bearer {KEY}"},
            )
        for r, status in ((guard, 401), (routed, 404)):
            openai_error(r, status)
            assert r.headers["content-type"] == "application/json"
            assert (
                r.content
                == json.dumps(r.json(), ensure_ascii=False, separators=(",", ":")).encode()
            )
            assert int(r.headers["content-length"]) == len(r.content)

    scenario(run)
