"""A policy's ``serving.json``: its world's verifier and selector become the defaults."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from bon_server.config import SERVING_FILE, Settings, world_defaults
from verifier_training.pipeline import serving_defaults


def _world(tmp_path, **serving):
    policy, orm = tmp_path / "paths-policy", tmp_path / "paths-orm"
    policy.mkdir()
    orm.mkdir()
    (policy / SERVING_FILE).write_text(json.dumps(serving))
    return policy, orm


def test_serving_json_sets_verifier_kind_and_selector(tmp_path):
    policy, orm = _world(tmp_path, verifier="paths-orm", verifier_kind="orm",
                         default_selector="verifier", method="orm")
    s = Settings(model=str(policy))
    assert (s.verifier, s.verifier_kind, s.default_selector) == (str(orm), "orm", "verifier")
    assert s.model_name == str(policy)  # only embedded policies are served by their dir name
    assert world_defaults(str(policy))["verifier"] == str(orm)


def test_explicit_settings_win_and_the_file_can_be_ignored(tmp_path):
    policy, _ = _world(tmp_path, verifier="paths-orm", verifier_kind="orm",
                       default_selector="verifier", prm_aggregation="last")
    s = Settings(model=str(policy), default_selector="majority")
    assert s.default_selector == "majority" and s.verifier is not None
    s = Settings(model=str(policy), verifier=None)  # explicitly none: majority
    assert s.verifier is None and s.default_selector is None
    s = Settings(model=str(policy), verifier="/some/prm", verifier_kind="prm")
    assert s.verifier == "/some/prm" and s.prm_aggregation == "last"
    s = Settings(model=str(policy), world_defaults=False)
    assert s.verifier is None


def test_world_defaults_off_from_the_environment(tmp_path, monkeypatch):
    policy, _ = _world(tmp_path, verifier="paths-orm", verifier_kind="orm")
    monkeypatch.setenv("BON_WORLD_DEFAULTS", "false")
    assert Settings(model=str(policy)).verifier is None
    monkeypatch.setenv("BON_WORLD_DEFAULTS", "true")
    assert Settings(model=str(policy)).verifier is not None
    with pytest.raises(ValidationError, match="needs --verifier"):
        Settings(model=str(policy), verifier=None, default_selector="verifier")


def test_no_serving_file_changes_nothing(tmp_path):
    (tmp_path / "p").mkdir()
    s = Settings(model=str(tmp_path / "p"))
    assert s.verifier is None and s.default_selector is None


def _eval(**acc):
    return {"prm_aggregation_for_weighted_majority": "min",
            "curve": {m: {"16": {"accuracy": a}} for m, a in acc.items()}}


def test_serving_defaults_pick_what_evaluated_best():
    ev = _eval(majority=0.5, orm=0.7, weighted_majority_orm=0.6, prm_min=0.65, prm_last=0.72,
               weighted_majority_prm=0.71, oracle=0.9, **{"pass@1": 0.3})
    s = serving_defaults(ev, "paths")
    assert s == {"method": "prm_last", "accuracy_at_16": 0.72, "majority_at_16": 0.5,
                 "verifier": "paths-prm", "verifier_kind": "prm",
                 "default_selector": "verifier", "prm_aggregation": "last"}
    s = serving_defaults(_eval(majority=0.8, orm=0.7, prm_min=0.8), "arith")
    assert s["method"] == "majority" and s["verifier"] is None  # ties go to voting
    s = serving_defaults(_eval(majority=0.5, weighted_majority_prm=0.6), "countdown")
    assert (s["default_selector"], s["prm_aggregation"]) == ("weighted_majority", "min")


# ------------------------------------------------------------------ the world's vote


def test_a_countdown_policy_votes_by_value_and_numbers_unless_told_otherwise():
    from conftest import ROOT

    from bon_server.answers import DEFAULT_RULES

    embedded = ROOT / "bon_server" / "embedded"
    for name in ("countdown-policy", "countdown-policy-rsft"):
        assert Settings(model=str(embedded / name)).voting_rules == ("expression_value",)
    assert Settings(model=str(embedded / "paths-policy")).voting_rules == DEFAULT_RULES
    assert Settings(model=str(embedded / "arith-policy")).voting_rules == DEFAULT_RULES
    explicit = Settings(model=str(embedded / "countdown-policy"), answer_rules="final_line")
    assert explicit.voting_rules == ("final_line",)
    # proxy mode knows the world only when told
    proxy = Settings(upstream="http://127.0.0.1:9/v1", world="countdown")
    assert proxy.voting_rules == ("expression_value",)
    assert Settings(upstream="http://127.0.0.1:9/v1").voting_rules == DEFAULT_RULES


def test_the_tasks_rules_are_valid_and_agree_with_the_checker():
    """Whatever a world's rules extract, two completions with the same extracted answer
    are both right or both wrong (the vote never merges a right answer with a wrong one)."""
    import random

    from bon_server.answers import check_rules, extract_answer
    from bon_server.tasks import TASKS

    for task in TASKS.values():
        check_rules(task.answer_rules)
    task = TASKS["countdown"]
    rng = random.Random(0)
    for problem in task.problems(200, seed=7):
        right = task.reference(problem)
        wrong = task.corrupt(problem, right, rng)
        key = extract_answer(right, task.answer_rules)
        assert key == extract_answer(f"The answer is {problem.answer}.", task.answer_rules)
        if wrong is not None:
            assert extract_answer(wrong, task.answer_rules) != key


def test_the_default_is_what_make_serve_serves(monkeypatch):
    """`bon-server serve` with no flags, `make serve` and the README's first request agree:
    the embedded paths policy, with its shipped verifier choosing."""
    monkeypatch.delenv("BON_MODEL", raising=False)  # conftest points the suites at arith
    s = Settings()
    assert s.model_name == "paths-policy" and s.served_world == "paths"
    assert s.verifier is not None and s.verifier.endswith("paths-orm")
    assert (s.verifier_kind, s.default_selector) == ("orm", "verifier")
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "MODEL ?=\n" in makefile  # make serve passes no --model: bon-server's own default
