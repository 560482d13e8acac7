"""The decode loop: sampling, stops, limits, streaming, cancellation, usage and timing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.errors import ContextLengthError
from edge_runtime.model.generate import (
    CancelToken,
    Generation,
    GenerationParams,
    stream,
)
from edge_runtime.model.runtime import Model
from edge_runtime.model.sampling import SamplingParams

GREEDY = SamplingParams()
SAMPLE = SamplingParams(do_sample=True, temperature=1.0, top_k=50, top_p=0.95)


def chat_ids(model: Model, text: str = "What is the temperature in the kitchen?") -> list[int]:
    return model.tokenizer.encode_chat([{"role": "user", "content": text}]).ids


def run(model: Model, params: GenerationParams, ids: list[int] | None = None) -> Generation:
    generation = model.generate(ids or chat_ids(model), params)
    generation.run()
    return generation


# A decoder that "predicts" a fixed script: the seam between the loop and onnxruntime.
@dataclass
class _State:
    length: int = 0


class ScriptedDecoder:
    def __init__(self, script: Sequence[int], vocab: int, eos: int):
        self.script, self.vocab, self.eos = list(script), vocab, eos

    def start(self) -> _State:
        return _State()

    def release(self, state: _State) -> None:
        pass

    def forward(self, state: _State, ids: Sequence[int]) -> np.ndarray:
        step = state.length
        state.length += 1
        logits = np.zeros(self.vocab, dtype=np.float32)
        logits[self.script[step] if step < len(self.script) else self.eos] = 1.0
        return logits


def scripted(model: Model, script: list[int], params: GenerationParams) -> Generation:
    eos = model.eos_token_ids[0]
    return Generation(
        ScriptedDecoder(script, model.config.vocab_size, eos),
        model.tokenizer.stream_decoder(),
        [1, 2, 3],
        params,
        eos_token_ids=[eos],
        context_length=1024,
    )


def test_greedy_is_deterministic(tiny_model: Model) -> None:
    params = GenerationParams(max_new_tokens=24)
    first = run(tiny_model, params).result
    second = run(tiny_model, params).result
    assert first.token_ids == second.token_ids
    assert len(first.token_ids) > 0


def test_sampling_is_reproducible_with_a_seed(tiny_model: Model) -> None:
    def tokens(seed: int) -> tuple[int, ...]:
        params = GenerationParams(max_new_tokens=32, sampling=SAMPLE, seed=seed)
        return run(tiny_model, params).result.token_ids

    assert tokens(7) == tokens(7)
    assert len({tokens(seed) for seed in range(5)}) > 1


def test_max_new_tokens_ends_with_length(tiny_model: Model) -> None:
    params = GenerationParams(max_new_tokens=5, stop_token_ids=())
    # eos ids removed so only the limit can end it
    generation = unbounded(tiny_model, params)
    result = generation.run()
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 5


def unbounded(
    model: Model,
    params: GenerationParams,
    *,
    prompt: list[int] | None = None,
    context_length: int | None = None,
    cancel: CancelToken | None = None,
) -> Generation:
    """A generation on the real model that only its params (not the model's EOS) can end."""
    return Generation(
        model.decoder,
        model.tokenizer.stream_decoder(),
        prompt or chat_ids(model),
        params,
        eos_token_ids=[],
        context_length=context_length or model.context_length,
        cancel=cancel,
    )


def test_stop_token_ends_before_it(tiny_model: Model) -> None:
    sampling = SamplingParams(do_sample=True)
    reference = unbounded(
        tiny_model, GenerationParams(max_new_tokens=40, sampling=sampling, seed=3)
    ).run()
    assert len(set(reference.token_ids)) > 4
    stop = reference.token_ids[5]
    first = reference.token_ids.index(stop)
    params = GenerationParams(max_new_tokens=40, sampling=sampling, seed=3, stop_token_ids=(stop,))
    result = unbounded(tiny_model, params).run()
    assert result.finish_reason == "stop"
    assert result.token_ids == reference.token_ids[:first]


def test_eos_from_generation_config_stops(tiny_model: Model) -> None:
    eos = tiny_model.eos_token_ids[0]
    result = scripted(tiny_model, [100, 101, eos, 102], GenerationParams(max_new_tokens=10)).run()
    assert result.token_ids == (100, 101)
    assert result.finish_reason == "stop"


def test_stop_string_cuts_text_and_is_never_streamed(tiny_model: Model) -> None:
    text = "Turn on the kitchen light. Then stop here please."
    script = tiny_model.tokenizer.encode(text)
    params = GenerationParams(max_new_tokens=200, stop=("stop here",))
    generation = scripted(tiny_model, script, params)
    deltas = list(generation)
    assert generation.result.finish_reason == "stop"
    assert generation.result.text == "Turn on the kitchen light. Then "
    assert "".join(deltas) == generation.result.text
    assert all("stop" not in d for d in deltas)


def test_partial_stop_prefix_is_released_when_it_does_not_complete(tiny_model: Model) -> None:
    text = "the sto is open"
    script = tiny_model.tokenizer.encode(text)
    generation = scripted(tiny_model, script, GenerationParams(max_new_tokens=50, stop=("stop",)))
    assert "".join(generation) == text
    assert generation.result.finish_reason == "stop"  # ended by eos after the script


def test_multibyte_characters_split_across_tokens_stream_whole(tiny_model: Model) -> None:
    text = "温度 🙂 ok 😀😀 ü"
    script = tiny_model.tokenizer.encode(text)
    # The emoji are unknown to the tiny vocabulary: one token per byte.
    assert len(script) > len(text)
    generation = scripted(tiny_model, script, GenerationParams(max_new_tokens=100))
    deltas = list(generation)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert generation.result.text == text


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30))
def test_deltas_concatenate_to_the_full_text(tiny_model: Model, text: str) -> None:
    script = tiny_model.tokenizer.encode(text)
    generation = scripted(tiny_model, script, GenerationParams(max_new_tokens=200))
    deltas = list(generation)
    assert "".join(deltas) == generation.result.text == tiny_model.tokenizer.decode(script)


def test_real_model_stream_matches_decode(tiny_model: Model) -> None:
    for seed in range(3):
        generation = tiny_model.generate(
            chat_ids(tiny_model, "厨房的温度是多少？"),
            GenerationParams(max_new_tokens=40, sampling=SAMPLE, seed=seed),
        )
        text = "".join(generation)
        assert text == tiny_model.tokenizer.decode(generation.result.token_ids)


def test_prompt_longer_than_the_window_is_refused(tiny_model: Model) -> None:
    ids = [5] * tiny_model.context_length
    with pytest.raises(ContextLengthError, match="context window"):
        tiny_model.generate(ids, GenerationParams())


def test_context_window_bounds_the_answer(tiny_model: Model) -> None:
    prompt = chat_ids(tiny_model)
    generation = unbounded(
        tiny_model,
        GenerationParams(max_new_tokens=100),
        prompt=prompt,
        context_length=len(prompt) + 3,
    )
    result = generation.run()
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 3


def test_chat_drops_oldest_turns_to_fit(tiny_model: Model) -> None:
    long_turn = "the kitchen temperature is fine " * 40
    messages = [{"role": "system", "content": "Be brief."}]
    for _ in range(30):
        messages += [
            {"role": "user", "content": long_turn},
            {"role": "assistant", "content": long_turn},
        ]
    messages.append({"role": "user", "content": "and now?"})
    assert len(tiny_model.tokenizer.encode_chat(messages).ids) > tiny_model.context_length
    ids = tiny_model.fit(messages)
    assert len(ids) < tiny_model.context_length
    text = tiny_model.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith("[gMASK]<sop><|system|>\nBe brief.")
    assert text.endswith("<|user|>\nand now?<|assistant|>")


def test_chat_error_policy_refuses(tiny_model: Model) -> None:
    messages = [{"role": "user", "content": "kitchen " * 3000}]
    with pytest.raises(ContextLengthError):
        tiny_model.fit(messages)


def test_usage_and_timing(tiny_model: Model) -> None:
    ids = chat_ids(tiny_model)
    generation = unbounded(tiny_model, GenerationParams(max_new_tokens=16), prompt=ids)
    result = generation.run()
    assert result.usage.prompt_tokens == len(ids)
    assert result.usage.completion_tokens == 16
    assert result.usage.total_tokens == len(ids) + 16
    assert result.timing.time_to_first_token_s > 0
    assert result.timing.decode_s > 0
    assert result.decode_tokens_per_s > 0


def test_cancel_stops_after_the_current_step(tiny_model: Model) -> None:
    cancel = CancelToken()
    generation = unbounded(tiny_model, GenerationParams(max_new_tokens=200), cancel=cancel)
    for count, _ in enumerate(generation, start=1):
        if count == 3:
            cancel.cancel()
    assert generation.result.finish_reason == "cancelled"
    assert generation.result.usage.completion_tokens < 200


def test_async_stream_runs_off_loop_and_cancels_on_exit(tiny_model: Model) -> None:
    generation = unbounded(tiny_model, GenerationParams(max_new_tokens=200))

    async def take_two() -> list[str]:
        got: list[str] = []
        agen = stream(generation, tiny_model.executor)
        async for delta in agen:
            got.append(delta)
            if len(got) == 2:
                break
        await agen.aclose()
        return got

    assert len(asyncio.run(take_two())) == 2
    assert generation.cancel_token.cancelled
    # The abandoned generation is run to its end on the model's thread, so it has a result.
    tiny_model.executor.submit(lambda: None).result()
    assert generation.result.finish_reason == "cancelled"
    assert generation.result.usage.completion_tokens < 200


def test_generation_params_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        GenerationParams(max_new_tokens=0)
    with pytest.raises(ValueError):
        GenerationParams(stop=("",))
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)


def test_text_held_back_is_released_when_eos_ends_the_answer(tiny_model: Model) -> None:
    # "🙂" is four byte tokens in the tiny vocabulary; stop after the first three, then EOS.
    script = tiny_model.tokenizer.encode("ok 🙂")[:-1]
    generation = scripted(tiny_model, script, GenerationParams(max_new_tokens=50))
    text = "".join(generation)
    assert generation.result.finish_reason == "stop"
    assert text == generation.result.text == tiny_model.tokenizer.decode(script)


def test_long_prompts_are_prefilled_in_chunks_with_the_same_result(
    tiny_model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.model import runtime

    prompt = chat_ids(tiny_model, "the kitchen temperature is fine " * 120)
    assert len(prompt) > 2 * runtime.PREFILL_CHUNK
    chunked = unbounded(tiny_model, GenerationParams(max_new_tokens=8), prompt=prompt).run()
    monkeypatch.setattr(runtime, "PREFILL_CHUNK", 100_000)
    whole = unbounded(tiny_model, GenerationParams(max_new_tokens=8), prompt=prompt).run()
    assert chunked.token_ids == whole.token_ids
