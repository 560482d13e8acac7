"""Train a small GLM on the assistant dataset: its own tokenizer, loss on assistant tokens only.

Workstation side (the export extra): PyTorch and transformers' ``GlmForCausalLM``. Seeded and
single-process, so a run on the same data and settings reproduces; progress (loss, tokens per
second, time left) is printed as it goes. The result is an ordinary Hugging Face checkpoint that
`edge-runtime model export` turns into an INT8 ONNX model directory.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edge_runtime.model import dataset
from edge_runtime.model.tiny import TinyShape, glm_config, train_tokenizer
from edge_runtime.model.tokenizer import GLM_TURN_END_TOKENS, ChatTokenizer


@dataclass(frozen=True)
class TrainSettings:
    """What to train and for how long."""

    shape: TinyShape = field(default_factory=lambda: TinyShape(vocab_size=4096))
    samples: int = 40_000
    seed: int = 0
    minutes: float = 30.0
    max_steps: int = 0  # 0: until the time is up
    batch_tokens: int = 4096
    # A conversation is ~1,050 tokens, ~950 of them the system block listing the tools.
    max_length: int = 1280
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    log_every_s: float = 15.0


@dataclass(frozen=True)
class Encoded:
    """One conversation as token ids, and which of them the loss is computed on."""

    ids: list[int]
    learn: list[bool]


def encode(tokenizer: ChatTokenizer, sample: dataset.Sample, tools: Sequence[Any]) -> Encoded:
    """Tokens of a rendered conversation; the loss covers what the assistant writes.

    That is every token after ``<|assistant|>`` up to and including the token that ends the turn
    (``<|observation|>`` after a tool call, ``<|user|>`` after an answer), which is how a GLM
    stops; a final ``<|user|>`` is appended so the last answer ends the same way.
    """
    text = tokenizer.render(sample.messages, tools=tools, add_generation_prompt=False)
    return _learned(tokenizer, tokenizer.encode(text))


def _learned(tokenizer: ChatTokenizer, ids: list[int]) -> Encoded:
    ids = [*ids, _id(tokenizer, "<|user|>")]
    assistant = _id(tokenizer, "<|assistant|>")
    ends = {_id(tokenizer, t) for t in GLM_TURN_END_TOKENS}
    learn: list[bool] = []
    inside = False
    for token in ids:
        learn.append(inside)
        if token == assistant:
            inside = True
        elif inside and token in ends:
            inside = False
    return Encoded(ids, learn)


def _id(tokenizer: ChatTokenizer, token: str) -> int:
    found = tokenizer.token_id(token)
    if found is None:
        raise ValueError(f"the tokenizer has no {token}")
    return found


def train(out: Path, settings: TrainSettings, log: TextIO) -> Path:
    """Build the tokenizer, train the model, and save a checkpoint into ``out``."""
    import torch
    from transformers import GenerationConfig, GlmConfig, GlmForCausalLM

    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    tools = dataset.tool_schemas()
    samples = dataset.generate("train", settings.samples, seed=settings.seed)
    log.write(f"data: {len(samples)} conversations\n")
    # Every conversation starts with the same system block (the tool list, ~1,000 tokens). The
    # tokenizer learns it from a share of copies rather than one per conversation, and it is
    # encoded once: the rest of each conversation starts at a special token, so encoding the two
    # parts apart gives the same ids as encoding the whole.
    head = _rendered([[]], tools)[0]
    rests = [text.removeprefix(head) for text in _rendered([s.messages for s in samples], tools)]
    corpus = [*rests, *[head] * max(1, len(rests) // 8)]
    vocab = train_tokenizer(
        out, settings.shape.vocab_size, settings.shape.max_positions, corpus, copyable=True
    )
    tokenizer = ChatTokenizer.from_directory(out)
    prefix = tokenizer.encode(head)
    room = settings.max_length - len(prefix)
    batch = tokenizer.backend.encode_batch(rests, add_special_tokens=False)
    # In training, the system block runs once per step without gradients and its cache is shared
    # by the batch, so the steps pay for the ~100 tokens that differ, not for the whole.
    encoded = [_learned(tokenizer, list(e.ids)) for e in batch if len(e.ids) < room]
    tokens = sum(len(e.ids) for e in encoded)
    learned = sum(sum(e.learn) for e in encoded)
    if not encoded:
        raise ValueError(f"no conversation fits max_length = {settings.max_length} tokens")
    log.write(
        f"tokenizer: {vocab} tokens; {len(encoded)} conversations, {tokens} tokens, "
        f"{learned} of them the assistant's\n"
    )
    eos = [_id(tokenizer, t) for t in GLM_TURN_END_TOKENS]
    model = GlmForCausalLM(glm_config(GlmConfig, vocab, settings.shape, eos))
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=0.01, betas=(0.9, 0.95)
    )
    order = random.Random(settings.seed)
    batches = _batches(encoded, settings.batch_tokens)
    deadline = time.monotonic() + settings.minutes * 60
    planned = settings.max_steps or _planned_steps(settings)
    step, seen, started, last_log = 0, 0, time.monotonic(), 0.0
    losses: list[float] = []
    while step < planned and time.monotonic() < deadline:
        order.shuffle(batches)
        for batch in batches:
            if step >= planned or time.monotonic() >= deadline:
                break
            ids, labels, mask = _tensors(batch, eos[0])
            # The schedule follows whichever ends training first: the steps or the clock.
            elapsed = (time.monotonic() - started) / max(1e-9, settings.minutes * 60)
            lr = _learning_rate(settings, step, max(step / planned, elapsed))
            for group in optimizer.param_groups:
                group["lr"] = lr
            cache = _prefix_cache(model, prefix, len(batch))
            if cache is not None:
                mask = torch.cat([torch.ones((len(batch), len(prefix)), dtype=mask.dtype), mask], 1)
            loss = model(
                input_ids=ids, attention_mask=mask, labels=labels, past_key_values=cache
            ).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            seen += int(mask.sum())  # prefix included: the tokens the model attended over
            losses.append(float(loss.detach()))
            now = time.monotonic()
            if now - last_log >= settings.log_every_s or step == planned:
                last_log = now
                rate = seen / max(now - started, 1e-9)
                left = min(deadline - now, (planned - step) * (now - started) / step)
                recent = sum(losses[-20:]) / len(losses[-20:])
                log.write(
                    f"step {step}/{planned}  loss {recent:.3f}  {rate:,.0f} tok/s  "
                    f"lr {lr:.2e}  {left / 60:.1f} min left\n"
                )
                log.flush()
    model.eval()
    model.save_pretrained(out)
    GenerationConfig(do_sample=False, eos_token_id=eos, pad_token_id=eos[0]).save_pretrained(out)
    summary = {
        "steps": step,
        "tokens_seen": seen,
        "minutes": round((time.monotonic() - started) / 60, 2),
        "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
        "first_loss": round(losses[0], 4) if losses else None,
        "settings": {
            "samples": settings.samples,
            "seed": settings.seed,
            "batch_tokens": settings.batch_tokens,
            "lr": settings.learning_rate,
            "shape": asdict(settings.shape),
        },
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.write(f"done: {step} steps, loss {summary['first_loss']} -> {summary['final_loss']}\n")
    return out


def _prefix_cache(model: Any, prefix: list[int], batch: int) -> Any:
    """The shared prefix's KV cache for a batch (None without a shared prefix)."""
    if not prefix:
        return None
    import torch
    from transformers import DynamicCache

    with torch.no_grad():
        legacy = model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
        layers = legacy.to_legacy_cache() if hasattr(legacy, "to_legacy_cache") else legacy
    expanded = tuple(
        (k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous())
        for k, v in layers
    )
    return DynamicCache.from_legacy_cache(expanded)  # type: ignore[arg-type]


def _rendered(
    conversations: Sequence[Sequence[Mapping[str, Any]]], tools: Sequence[Any]
) -> list[str]:
    """Conversations as text (GLM-4 format) for the tokenizer to learn from.

    Rendered by the runtime's own chat-template code (no vocabulary is needed to render).
    """
    from tokenizers import Tokenizer, models

    from edge_runtime.model.tiny import chat_template

    renderer = ChatTokenizer(Tokenizer(models.BPE()), chat_template(), {})
    return [renderer.render(c, tools=tools, add_generation_prompt=False) for c in conversations]


def _batches(encoded: list[Encoded], batch_tokens: int) -> list[list[Encoded]]:
    """Conversations of similar length together, about ``batch_tokens`` padded tokens each."""
    by_length = sorted(encoded, key=lambda e: len(e.ids))
    batches: list[list[Encoded]] = []
    current: list[Encoded] = []
    for item in by_length:
        if current and (len(current) + 1) * len(item.ids) > batch_tokens:
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


def _tensors(batch: list[Encoded], pad: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item.ids)
        ids[row, :n] = torch.tensor(item.ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(
            [t if learn else -100 for t, learn in zip(item.ids, item.learn, strict=True)]
        )
    return ids, labels, mask


def _planned_steps(settings: TrainSettings) -> int:
    # An upper bound for the schedule; the time limit usually ends training first.
    return max(100, int(settings.minutes * 60 * 2))


def _learning_rate(settings: TrainSettings, step: int, progress: float) -> float:
    """Linear warm-up, then cosine decay to a tenth over the run's progress (0..1)."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return settings.learning_rate * (0.1 + 0.9 * cosine)
