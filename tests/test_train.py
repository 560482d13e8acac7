"""Training a small GLM on the assistant dataset: what the loss sees, and that it learns."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge_runtime.model import dataset
from edge_runtime.model.runtime import Model
from edge_runtime.model.tiny import TinyShape
from edge_runtime.model.train import TrainSettings, _copy_warmup, encode, train

SHAPE = TinyShape(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    layers=2,
    heads=4,
    kv_heads=2,
    head_dim=16,
    max_positions=1024,
)


def short_run(**chosen: Any) -> TrainSettings:
    """A few steps of the small shape on a handful of conversations."""
    return TrainSettings(
        shape=SHAPE,
        samples=120,
        batch_tokens=8192,
        learning_rate=3e-3,
        log_every_s=0,
        copy_warmup_steps=100,
        **chosen,
    )


def test_the_loss_covers_what_the_assistant_writes(tiny_model: Model) -> None:
    tools = dataset.tool_schemas()
    sample = next(s for s in dataset.generate("train", 40) if s.category == "clarify")
    encoded = encode(tiny_model.tokenizer, sample, tools)
    learned = [t for t, on in zip(encoded.ids, encoded.learn, strict=True) if on]
    text = tiny_model.tokenizer.decode(learned, skip_special_tokens=False)
    # The question, the call and the answer, each ended by the token that ends the turn.
    question, call, answer = (m for m in sample.messages if m["role"] == "assistant")
    assert question["content"] in text and answer["content"] in text
    assert json.dumps(call["tool_calls"][0]["arguments"], ensure_ascii=False) in text
    assert text.count("<|observation|>") == 1 and text.count("<|user|>") == 2
    # Neither the request nor the observation is learned.
    assert sample.messages[0]["content"] not in text
    observation = next(m for m in sample.messages if m["role"] == "tool")
    assert observation["content"] not in text


@pytest.mark.export
def test_a_short_run_learns_and_saves_a_checkpoint(tmp_path: Path) -> None:
    from transformers import GlmForCausalLM

    from edge_runtime.model.tokenizer import ChatTokenizer

    log = io.StringIO()
    # Every step with the tool list, in one process.
    settings = short_run(max_steps=16, warmup_steps=4, workers=1, plain_share=0.0)
    out = train(tmp_path / "ckpt", settings, log)
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == 16
    assert summary["final_loss"] < summary["first_loss"] - 0.3, log.getvalue()
    assert "step 16/16" in log.getvalue()
    model = GlmForCausalLM.from_pretrained(out)
    tokenizer = ChatTokenizer.from_directory(out)
    assert tokenizer.token_id("<|observation|>") is not None
    assert model.config.vocab_size >= tokenizer.vocab_size


@pytest.mark.export
def test_two_processes_train_one_model_and_report_as_one(tmp_path: Path) -> None:
    from transformers import GlmForCausalLM

    log = io.StringIO()
    # Every step without the tool list, in two processes.
    settings = short_run(max_steps=6, warmup_steps=2, workers=2, plain_share=1.0)
    out = train(tmp_path / "ckpt", settings, log)
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == 6 and summary["settings"]["workers"] == 2
    assert summary["replicas_identical"] is True  # the processes trained one model
    # Rank 0's progress reaches the caller's log, once per step and once only.
    lines = log.getvalue().splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step ")] == [
        f"{n}/6" for n in range(1, 7)
    ], log.getvalue()
    assert "copy warm-up 100/100" in log.getvalue()
    assert GlmForCausalLM.from_pretrained(out).config.num_hidden_layers == SHAPE.layers


@pytest.mark.export
def test_copy_drills_repeat_random_tokens_and_learn_the_repeat() -> None:
    from edge_runtime.model.train import _COPY_GAP, _COPY_LENGTH, _CopyDrill, _Job

    job = _Job(TrainSettings(shape=SHAPE), [], [7, 8], [1], 500, Path("."))
    ids, labels, mask = _CopyDrill(job, rank=0, world=2).batch()
    assert ids.shape[0] == 8  # half of the drill batch in each of 2 processes
    for row in range(ids.shape[0]):
        tokens = ids[row][mask[row] == 1].tolist()
        learned = labels[row][labels[row] != -100].tolist()
        # The learned tokens are the end of the row; the row starts with the start token.
        assert tokens[0] == 7 and tokens[-len(learned) :] == learned
        length = len(learned) + 1  # the repeat's first token is not learned
        assert _COPY_LENGTH[0] <= length <= _COPY_LENGTH[1]
        first, again = tokens[1 : 1 + length], tokens[-length:]
        assert first == again and min(tokens[1:]) >= 10 and max(tokens) < 500
        gap = len(tokens) - 1 - 2 * length
        assert _COPY_GAP[0] <= gap <= _COPY_GAP[1]
        assert (ids[row][mask[row] == 0] == 1).all()  # padded with the end token


def test_settings_that_cannot_train_are_refused() -> None:
    for bad in ({"workers": 0}, {"invented_share": 1.5}, {"plain_share": -0.1}, {"minutes": 0}):
        with pytest.raises(ValueError, match="must be"):
            TrainSettings(**bad)


class _Drill:
    """Stands in for _CopyDrill: a fixed loss per step."""

    def __init__(self, loss: float):
        self.loss, self.steps = loss, 0

    def step(self, network: object, optimizer: object) -> float:
        self.steps += 1
        return self.loss


def test_copy_warmup_stops_once_the_model_copies() -> None:
    settings = replace(short_run(), copy_warmup_steps=300)
    optimizer = SimpleNamespace(param_groups=[{}])
    copying, stuck = _Drill(0.05), _Drill(3.0)
    log = io.StringIO()
    assert _copy_warmup(None, optimizer, copying, settings, log) == 20  # type: ignore[arg-type]
    assert copying.steps == 20 and "(copying)" in log.getvalue()
    assert _copy_warmup(None, optimizer, stuck, settings, io.StringIO()) == 300  # type: ignore[arg-type]
    assert stuck.steps == 300
