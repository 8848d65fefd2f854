"""The command line: one flag per Settings field, and invalid settings refused before serving."""

from __future__ import annotations

import argparse

import pytest

from bon_server.cli import build_parser, main
from bon_server.config import Settings


@pytest.fixture(autouse=True)
def no_bon_env(monkeypatch):
    """BON_* variables of the calling shell must not leak into these tests."""
    import os

    for key in list(os.environ):
        if key.startswith("BON_"):
            monkeypatch.delenv(key)


def serve_action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    return next(a for a in serve._actions if flag in a.option_strings)


def parse(*argv: str) -> dict:
    args = vars(build_parser().parse_args(["serve", *argv]))
    args.pop("command")
    args.pop("log_level")
    return args


def test_every_settings_field_has_a_flag():
    parser = build_parser()
    for name in Settings.model_fields:
        action = serve_action(parser, "--" + name.replace("_", "-"))
        assert action.dest == name
        assert action.help


def test_flags_not_given_are_left_to_settings():
    assert parse() == {}  # SUPPRESS: env vars and defaults decide


def test_typed_flags():
    args = parse(
        "--default-best-of",
        "8",
        "--keepalive-interval-s",
        "0.5",
        "--verifier",
        "/models/orm",
        "--max-model-len",
        "256",
    )
    assert args == {
        "default_best_of": 8,
        "keepalive_interval_s": 0.5,
        "verifier": "/models/orm",
        "max_model_len": 256,
    }
    settings = Settings(**args)
    assert settings.default_best_of == 8
    assert settings.verifier == "/models/orm" and settings.max_model_len == 256


def test_help_shows_description_and_default():
    action = serve_action(build_parser(), "--verifier-batch-size")
    assert "most texts per scoring forward pass" in action.help
    assert "[64]" in action.help


def test_verifier_kind_has_choices(capsys):
    action = serve_action(build_parser(), "--verifier-kind")
    assert list(action.choices) == ["orm", "prm"]
    assert parse("--verifier-kind", "prm") == {"verifier_kind": "prm"}
    with pytest.raises(SystemExit) as info:
        parse("--verifier-kind", "rm")
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_answer_rules_comma_separated():
    action = serve_action(build_parser(), "--answer-rules")
    assert "comma-separated" in action.help
    assert "else final_line,boxed" in action.help and "expression_value" in action.help
    args = parse("--answer-rules", "boxed, last_number")
    assert Settings(**args).answer_rules == ("boxed", "last_number")


def test_enforce_eager_is_a_boolean_pair():
    assert parse("--enforce-eager") == {"enforce_eager": True}
    assert parse("--no-enforce-eager") == {"enforce_eager": False}
    assert Settings(**parse("--enforce-eager")).enforce_eager is True


def test_int_flag_rejects_text(capsys):
    with pytest.raises(SystemExit) as info:
        parse("--default-best-of", "many")
    assert info.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_a_subcommand_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--default-best-of", "10", "--max-best-of", "4"], "exceeds max_best_of"),
        # the default policy ships a verifier (serving.json): without it, these need one
        (["--no-world-defaults", "--default-selector", "verifier"], "needs --verifier"),
        (["--no-world-defaults", "--default-selector", "weighted_majority"], "needs --verifier"),
        (["--default-selector", "oracle"], "valid selectors"),
        (["--answer-rules", "boxed,psychic"], "valid rules"),
        (["--port", "70000"], "port"),
        (["--default-best-of", "0"], "default_best_of"),
        (["--keepalive-interval-s", "0"], "keepalive_interval_s"),
    ],
)
def test_invalid_settings_exit_2_with_a_message(capsys, argv, needle):
    with pytest.raises(SystemExit) as info:
        main(["serve", *argv])  # would start uvicorn (and block) if validation let it through
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bon-server: ")
    assert needle in err


def test_env_vars_fill_in_for_missing_flags(monkeypatch, capsys):
    monkeypatch.setenv("BON_MAX_BEST_OF", "2")
    with pytest.raises(SystemExit) as info:
        main(["serve", "--default-best-of", "3"])
    assert info.value.code == 2
    assert "exceeds max_best_of (2)" in capsys.readouterr().err


def test_api_key_is_repeatable():
    args = parse("--api-key", "sk-a", "--api-key", "sk-b")
    assert args == {"api_keys": ["sk-a", "sk-b"]}
    assert Settings(**args).api_keys == ("sk-a", "sk-b")
    action = serve_action(build_parser(), "--api-key")
    assert "--api-keys" in action.option_strings
    assert "BON_API_KEYS" in action.help


def test_api_key_flag_with_a_comma_is_refused_not_split(capsys):
    args = parse("--api-key", "abc,def")
    assert args == {"api_keys": ["abc,def"]}
    with pytest.raises(ValueError, match="must not contain a comma"):
        Settings(**args)
    with pytest.raises(SystemExit) as info:
        main(["serve", "--api-key", "sk-ok", "--api-key", "abc,def"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "api_keys" in err and "must not contain a comma" in err
    assert "abc,def" not in err  # the key itself is not echoed


def test_api_keys_from_env_are_comma_separated(monkeypatch):
    monkeypatch.setenv("BON_API_KEYS", "sk-a,sk-b")
    monkeypatch.setenv("BON_ANSWER_RULES", "boxed,last_number")
    settings = Settings(**parse())
    assert settings.api_keys == ("sk-a", "sk-b")
    assert settings.answer_rules == ("boxed", "last_number")


def test_reliability_flags():
    args = parse(
        "--request-timeout",
        "30",
        "--shutdown-timeout",
        "5",
        "--max-sequences-in-flight",
        "256",
        "--admission-timeout",
        "2.5",
        "--max-request-bytes",
        "65536",
        "--metrics-require-key",
        "--log-content",
    )
    s = Settings(**args)
    assert (s.request_timeout, s.shutdown_timeout, s.admission_timeout) == (30, 5, 2.5)
    assert s.max_sequences_in_flight == 256 and s.max_request_bytes == 65536
    assert s.metrics_require_key and s.log_content


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--max-sequences-in-flight", "8"], "could never be admitted"),
        (["--request-timeout", "0"], "request_timeout"),
        (["--max-request-bytes", "10"], "max_request_bytes"),
    ],
)
def test_invalid_reliability_settings_exit_2(capsys, argv, needle):
    with pytest.raises(SystemExit) as info:
        main(["serve", *argv])
    assert info.value.code == 2
    assert needle in capsys.readouterr().err


def test_a_taken_port_fails_before_the_engine_starts(tmp_path):
    """The server listens before its lifespan loads the engine: a taken port is exit 3 with
    uvicorn's message, without an engine, and the engine's own processes cannot take the port
    while it starts (the race that once failed CI)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "bon_server", "serve", "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 3  # uvicorn's startup failure, as when the engine fails to load
    out = proc.stdout + proc.stderr
    assert "address already in use" in out.lower()
    assert "Initializing" not in out and "EngineCore" not in out  # no engine was started
