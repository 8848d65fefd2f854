"""Wire-model validation and conversion to domain objects (prompts, sampling params)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bon_server.errors import InvalidRequestError
from bon_server.protocol import ChatCompletionRequest, CompletionRequest
from bon_server.types import Message, Prompt

USER = [{"role": "user", "content": "What is 2 + 3?"}]


def chat(**kwargs) -> ChatCompletionRequest:
    kwargs.setdefault("messages", USER)
    return ChatCompletionRequest.model_validate(kwargs)


def completion(**kwargs) -> CompletionRequest:
    kwargs.setdefault("prompt", "2 + 3 =")
    return CompletionRequest.model_validate(kwargs)


# ------------------------------------------------------------------ validation


def test_unknown_fields_are_accepted():
    req = chat(model="m", some_future_field={"a": 1}, parallel_tool_calls=False)
    assert req.model == "m"
    assert req.to_prompt().messages == (Message("user", "What is 2 + 3?"),)
    assert completion(some_future_field=1).to_prompts() == [Prompt(text="2 + 3 =")]


@pytest.mark.parametrize("make", [chat, completion])
def test_best_of_below_n_is_rejected_with_param(make):
    with pytest.raises(InvalidRequestError) as info:
        make(n=3, best_of=2)
    assert info.value.param == "best_of"
    assert info.value.status_code == 400


@pytest.mark.parametrize("make", [chat, completion])
def test_best_of_equal_to_n_is_fine(make):
    req = make(n=3, best_of=3)
    assert (req.n, req.best_of) == (3, 3)


@pytest.mark.parametrize("make", [chat, completion])
def test_at_most_four_stop_sequences(make):
    assert make(stop=["a", "b", "c", "d"]).to_sampling().stop == ("a", "b", "c", "d")
    with pytest.raises(ValidationError, match="at most 4 stop sequences"):
        make(stop=["a", "b", "c", "d", "e"])


def test_stop_string_and_empty_stop():
    assert chat(stop="\n").to_sampling().stop == ("\n",)
    assert chat().to_sampling().stop == ()
    with pytest.raises(ValidationError):
        chat(stop=["ok", ""])


@pytest.mark.parametrize("temperature", [-0.1, 2.01])
def test_temperature_out_of_range(temperature):
    with pytest.raises(ValidationError) as info:
        chat(temperature=temperature)
    assert info.value.errors()[0]["loc"] == ("temperature",)


@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_temperature_bounds_are_inclusive(temperature):
    assert chat(temperature=temperature).to_sampling().temperature == temperature


def test_top_logprobs_requires_logprobs():
    with pytest.raises(InvalidRequestError) as info:
        chat(top_logprobs=2)
    assert info.value.param == "top_logprobs"
    with pytest.raises(InvalidRequestError):
        chat(top_logprobs=0, logprobs=False)
    assert chat(top_logprobs=2, logprobs=True).top_logprobs == 2


@pytest.mark.parametrize("make", [chat, completion])
def test_stream_options_requires_stream(make):
    with pytest.raises(InvalidRequestError) as info:
        make(stream_options={"include_usage": True})
    assert info.value.param == "stream_options"
    req = make(stream=True, stream_options={"include_usage": True})
    assert req.include_usage
    assert not make(stream=True).include_usage


@pytest.mark.parametrize("n", [0, 129])
def test_n_range(n):
    with pytest.raises(ValidationError):
        chat(n=n)


def test_messages_required_and_non_empty():
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({})
    with pytest.raises(ValidationError):
        chat(messages=[])


def test_tools_and_json_mode_rejected():
    with pytest.raises(InvalidRequestError) as info:
        chat(tools=[{"type": "function", "function": {"name": "f"}}])
    assert info.value.param == "tools"
    assert chat(tools=[{"type": "function"}], tool_choice="none").tools
    with pytest.raises(InvalidRequestError) as info:
        chat(response_format={"type": "json_object"})
    assert info.value.param == "response_format"


# ------------------------------------------------------------------ to_prompt


def test_content_parts_are_flattened():
    req = chat(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2?"}],
            }
        ]
    )
    assert req.to_prompt().messages == (Message("user", "What is 2?"),)


def test_image_part_rejected_with_param():
    req = chat(
        messages=[
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                ],
            },
        ]
    )
    with pytest.raises(InvalidRequestError) as info:
        req.to_prompt()
    assert info.value.param == "messages.1.content"
    assert "image_url" in info.value.message


def test_none_content_is_empty_text():
    req = chat(messages=[*USER, {"role": "assistant", "content": None}])
    assert req.to_prompt().messages[-1] == Message("assistant", "")


def test_developer_role_maps_to_system():
    req = chat(messages=[{"role": "developer", "content": "rules"}, *USER])
    prompt = req.to_prompt()
    assert prompt.messages == (Message("system", "rules"), Message("user", "What is 2 + 3?"))
    assert prompt.question() == "What is 2 + 3?"


@pytest.mark.parametrize("role", ["tool", "function"])
def test_tool_roles_rejected_in_to_prompt(role):
    req = chat(messages=[*USER, {"role": role, "content": "42"}])
    with pytest.raises(InvalidRequestError) as info:
        req.to_prompt()
    assert info.value.param == "messages.1.role"


def test_unknown_role_is_a_validation_error():
    with pytest.raises(ValidationError):
        chat(messages=[{"role": "robot", "content": "hi"}])


# ------------------------------------------------------------------ to_sampling


def test_logit_bias_keys_must_be_token_ids():
    assert chat(logit_bias={"17": 5, "3": -100}).to_sampling().logit_bias == (
        (17, 5.0),
        (3, -100.0),
    )
    with pytest.raises(InvalidRequestError) as info:
        chat(logit_bias={"hello": 1}).to_sampling()
    assert info.value.param == "logit_bias"


def test_logit_bias_value_range():
    with pytest.raises(ValidationError):
        chat(logit_bias={"1": 101})


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=10, max_completion_tokens=20).to_sampling().max_tokens == 20
    assert chat(max_tokens=10).to_sampling().max_tokens == 10
    assert chat().to_sampling().max_tokens is None


def test_chat_logprobs_map_to_top_logprobs_count():
    assert chat().to_sampling().logprobs is None
    assert chat(logprobs=True).to_sampling().logprobs == 0
    assert chat(logprobs=True, top_logprobs=5).to_sampling().logprobs == 5


def test_sampling_defaults_and_extensions():
    s = chat().to_sampling()
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty) == (
        1.0,
        1.0,
        0,
        0.0,
        1.0,
    )
    s = chat(
        temperature=0.3,
        top_p=0.9,
        top_k=-1,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        seed=7,
        ignore_eos=True,
    ).to_sampling()
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty) == (
        0.3,
        0.9,
        0,
        0.05,
        1.1,
    )
    assert (s.presence_penalty, s.frequency_penalty, s.seed, s.ignore_eos) == (0.5, -0.5, 7, True)
    assert chat(top_k=40).to_sampling().top_k == 40


def test_completion_sampling():
    assert completion().to_sampling().max_tokens == 16  # OpenAI's completions default
    s = completion(max_tokens=5, logprobs=3).to_sampling()
    assert (s.max_tokens, s.logprobs) == (5, 3)
    assert completion().to_sampling().logprobs is None
    with pytest.raises(ValidationError):
        completion(logprobs=6)


# ------------------------------------------------------------------ to_prompts


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("2 + 3 =", [Prompt(text="2 + 3 =")]),
        (["a", "b"], [Prompt(text="a"), Prompt(text="b")]),
        ([5, 6, 7], [Prompt(token_ids=(5, 6, 7))]),
        ([[1, 2], [3]], [Prompt(token_ids=(1, 2)), Prompt(token_ids=(3,))]),
    ],
)
def test_completion_to_prompts(prompt, expected):
    assert completion(prompt=prompt).to_prompts() == expected


def test_completion_empty_prompt_list_and_suffix_rejected():
    with pytest.raises(InvalidRequestError) as info:
        completion(prompt=[])
    assert info.value.param == "prompt"
    with pytest.raises(InvalidRequestError) as info:
        completion(suffix="end")
    assert info.value.param == "suffix"


def test_best_of_n_extensions_parsed():
    req = chat(best_of=8, selector="majority", return_candidates=True, prm_aggregation="min")
    assert (req.best_of, req.selector, req.return_candidates, req.prm_aggregation) == (
        8,
        "majority",
        True,
        "min",
    )
