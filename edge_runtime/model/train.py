"""Train a small GLM on the assistant dataset: its own tokenizer, loss on assistant tokens only.

Workstation side (the export extra): PyTorch and transformers' ``GlmForCausalLM``. Seeded, so
a run with the same data, settings and number of worker processes reproduces (the workers split
every batch, so a different number of them is a different run); progress (loss, tokens per
second, time left) is printed as it goes. The result is an ordinary Hugging Face checkpoint that
`edge-runtime model export` turns into an INT8 ONNX model directory.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, TextIO

from edge_runtime.model import dataset
from edge_runtime.model.tiny import TinyShape, glm_config, train_tokenizer
from edge_runtime.model.tokenizer import GLM_SPECIAL_TOKENS, GLM_TURN_END_TOKENS, ChatTokenizer


@dataclass(frozen=True)
class TrainSettings:
    """What to train and for how long."""

    shape: TinyShape = field(default_factory=lambda: TinyShape(vocab_size=4096))
    samples: int = 80_000
    seed: int = 0
    # The recipe that learned to copy readings into answers on a 2-vCPU box (docs/models.md):
    # 1,024-token batches at 1e-3 in one process. Runs with 2,048-token batches at 1.5e-3 over
    # two processes did not start to copy in 28 to 52 minutes.
    minutes: float = 45.0
    max_steps: int = 0  # 0: until the time is up
    batch_tokens: int = 1024
    # A conversation is ~1,050 tokens, ~950 of them the system block listing the tools.
    max_length: int = 1280
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    log_every_s: float = 15.0
    # Data-parallel training processes; each takes its share of every batch.
    workers: int = 1
    invented_share: float = dataset.INVENTED_SHARE
    # Steps of copy drills before the first conversation at most (see _CopyDrill); they stop
    # earlier once the model copies.
    copy_warmup_steps: int = 1000
    # The share of the training time whose conversations leave out the system block (the tool
    # list, ~950 tokens): with it, the ~100 tokens a copy must be found among are a tenth of what
    # attention spreads over, and the model does not learn to copy (the digits of a forecast
    # cost 2.4 nats each after 52 minutes with the block throughout).
    plain_share: float = 0.5

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if not 0.0 <= self.invented_share <= 1.0 or not 0.0 <= self.plain_share <= 1.0:
            raise ValueError("invented_share and plain_share must be between 0 and 1")
        if self.minutes <= 0 or self.samples < 1 or self.batch_tokens < 1:
            raise ValueError("minutes, samples and batch_tokens must be positive")


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
    out.mkdir(parents=True, exist_ok=True)
    tools = dataset.tool_schemas()
    samples = dataset.generate(
        "train", settings.samples, seed=settings.seed, invented=settings.invented_share
    )
    log.write(f"data: {len(samples)} conversations\n")
    # Every conversation starts with the same system block (the tool list, ~1,000 tokens). The
    # tokenizer learns it from a share of copies rather than one per conversation, and it is
    # encoded once: the rest of each conversation starts at a special token, so encoding the two
    # parts apart gives the same ids as encoding the whole.
    head = _rendered([[]], tools)[0]
    rests = [text.removeprefix(head) for text in _rendered([s.messages for s in samples], tools)]
    # Made-up names stay out of the vocabulary: they are spelled with the pieces real words are
    # made of, as a name the model never saw will be.
    real = [rest for rest, sample in zip(rests, samples, strict=True) if not sample.invented]
    corpus = [*real, *[head] * max(1, len(real) // 8)]
    vocab = train_tokenizer(
        out, settings.shape.vocab_size, settings.shape.max_positions, corpus, copyable=True
    )
    tokenizer = ChatTokenizer.from_directory(out)
    prefix = tokenizer.encode(head)
    plain = tokenizer.encode(_rendered([[]], [])[0])  # [gMASK]<sop>: no tool list
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
    job = _Job(settings, encoded, prefix, eos, vocab, out, plain=plain)
    summary = _fit(0, 1, job, log) if settings.workers <= 1 else _fit_in_parallel(job, log)
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.write(
        f"done: {summary['steps']} steps, loss {summary['first_loss']} -> {summary['final_loss']}\n"
    )
    return out


@dataclass(frozen=True)
class _Job:
    """Everything a training process needs (sent to each worker as it starts)."""

    settings: TrainSettings
    encoded: list[Encoded]
    prefix: list[int]
    eos: list[int]
    vocab: int
    out: Path
    port: int = 0
    plain: list[int] = field(default_factory=list)  # the prefix without the tool list


class _Log(Protocol):
    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...


def _fit(rank: int, world: int, job: _Job, log: _Log) -> dict[str, Any]:
    """The training loop of one process; with ``world`` > 1, one of several data-parallel ones.

    Every process holds the whole model and takes its share of every batch; gradients are
    averaged across processes (torch's DistributedDataParallel over gloo) before each step.
    Rank 0 decides when to stop and the learning rate, logs, and saves the checkpoint.
    """
    import torch
    from transformers import GenerationConfig, GlmConfig, GlmForCausalLM

    settings = job.settings
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    model = GlmForCausalLM(glm_config(GlmConfig, job.vocab, settings.shape, job.eos))
    model.train()
    network: Any = model
    if world > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{job.port}",
            rank=rank,
            world_size=world,
            # A process that dies leaves the others waiting in a collective this long at most.
            timeout=timedelta(minutes=5),
        )
        network = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=0.01, betas=(0.9, 0.95)
    )
    # The clock starts before the warm-up: `minutes` is the whole training time.
    started = time.monotonic()
    deadline = started + settings.minutes * 60
    drill = _CopyDrill(job, rank, world)
    drilled = _copy_warmup(
        network, optimizer, drill, settings, log if rank == 0 else _Quiet(), world=world
    )
    order = random.Random(settings.seed)
    batches = _batches(job.encoded, settings.batch_tokens)
    planned = settings.max_steps or _planned_steps(settings)
    step, seen, last_log, last_bare = 0, 0, 0.0, False
    losses: list[float] = []
    done = False
    while not done:
        order.shuffle(batches)  # the same order in every process: the same seed
        for whole in batches:
            # The schedule follows whichever ends training first: the steps or the clock.
            elapsed = (time.monotonic() - started) / max(1e-9, settings.minutes * 60)
            lr = _learning_rate(settings, step, max(step / planned, elapsed))
            go = step < planned and time.monotonic() < deadline
            # The first part of the run leaves the tool list out (see TrainSettings.plain_share).
            bare = elapsed < settings.plain_share
            go, lr, bare = _agree(world, go, lr, bare)
            if not go:
                done = True
                break
            prefix = job.plain if bare else job.prefix
            if rank == 0 and step > 0 and not bare and last_bare:
                log.write(f"step {step}: the tool list from here on\n")
            last_bare = bare
            for group in optimizer.param_groups:
                group["lr"] = lr
            share = whole[rank::world]
            # A batch with fewer conversations than processes: the ones left out repeat the
            # first (DDP needs every process to step), and their tokens are not counted.
            batch = share or whole[:1]
            ids, labels, mask = _tensors(batch, job.eos[0])
            cache = _prefix_cache(model, prefix, len(batch))
            if cache is not None:
                full = torch.ones((len(batch), len(prefix)), dtype=mask.dtype)
                mask = torch.cat([full, mask], 1)
            loss = network(
                input_ids=ids, attention_mask=mask, labels=labels, past_key_values=cache
            ).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            # The loss over all processes, and the tokens attended over, prefix included.
            counted = int(mask.sum()) if share else 0
            mean_loss, tokens = _summed(world, float(loss.detach()), counted)
            seen += tokens
            losses.append(mean_loss)
            now = time.monotonic()
            if rank == 0 and (now - last_log >= settings.log_every_s or step == planned):
                last_log = now
                rate = seen / max(now - started, 1e-9)
                left = min(deadline - now, (planned - step) * (now - started) / step)
                recent = sum(losses[-20:]) / len(losses[-20:])
                log.write(
                    f"step {step}/{planned}  loss {recent:.3f}  {rate:,.0f} tok/s  "
                    f"lr {lr:.2e}  {left / 60:.1f} min left\n"
                )
                log.flush()
    summary = {
        "steps": step,
        "tokens_seen": seen,
        "minutes": round((time.monotonic() - started) / 60, 2),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4) if losses else None,
        "first_loss": round(losses[0], 4) if losses else None,
        "settings": {
            "samples": settings.samples,
            "seed": settings.seed,
            "batch_tokens": settings.batch_tokens,
            "lr": settings.learning_rate,
            "workers": world,
            "copy_warmup_steps": settings.copy_warmup_steps,
            "copy_warmup_steps_run": drilled,
            "plain_share": settings.plain_share,
            "invented_share": settings.invented_share,
            "shape": asdict(settings.shape),
        },
    }
    if world > 1:
        summary["replicas_identical"] = _replicas_identical(model)
    if rank == 0:
        model.eval()
        model.save_pretrained(job.out)
        eos = job.eos
        config = GenerationConfig(do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
        config.save_pretrained(job.out)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return summary


class _CopyDrill:
    """Random tokens, a gap, and the same tokens again; the loss is on the repeat.

    A conversation asks the model to copy only a few of its tokens (a name, a number), and a
    small model finds it easier to remember a likely name than to learn to look one up: trained
    on conversations alone, it never starts copying (after 50 minutes, the digits of a forecast
    still cost it 2 nats each, a guess among ten). A few hundred steps of these first teach it
    to copy, to write out the token it attends to, which the conversations then put to use
    (see _COPY_LENGTH).
    """

    def __init__(self, job: _Job, rank: int, world: int):
        import torch

        self.rows = max(1, _COPY_BATCH // world)
        self.start = job.prefix[0] if job.prefix else len(GLM_SPECIAL_TOKENS)
        self.pad = job.eos[0]
        self.first, self.vocab = len(GLM_SPECIAL_TOKENS), job.vocab
        self.generator = torch.Generator().manual_seed(job.settings.seed * 1000 + rank)

    def batch(self) -> tuple[Any, Any, Any]:
        """Input ids, labels and attention mask of one batch of drills."""
        import torch

        def draw(low: int, high: int) -> int:
            return int(torch.randint(low, high + 1, (1,), generator=self.generator))

        rows: list[tuple[list[int], int]] = []
        for _ in range(self.rows):
            length, gap = draw(*_COPY_LENGTH), draw(*_COPY_GAP)
            tokens = torch.randint(
                self.first, self.vocab, (length + gap,), generator=self.generator
            )
            copied = tokens[:length].tolist()
            rows.append(([self.start, *copied, *tokens[length:].tolist(), *copied], length))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (drill, length) in enumerate(rows):
            end = len(drill)
            ids[row, :end] = torch.tensor(drill)
            mask[row, :end] = 1
            # The repeat's first token cannot be foreseen; from the second on, it is a copy.
            labels[row, end - length + 1 : end] = ids[row, end - length + 1 : end]
        return ids, labels, mask

    def step(self, network: Any, optimizer: Any) -> float:
        """One optimizer step on a batch of drills; returns the loss."""
        import torch

        ids, labels, mask = self.batch()
        loss = network(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        return float(loss.detach())


def _copy_warmup(
    network: Any,
    optimizer: Any,
    drill: _CopyDrill,
    settings: TrainSettings,
    log: _Log,
    *,
    world: int = 1,
) -> int:
    """Drills of random tokens before the first conversation (see _CopyDrill); the steps run.

    They stop once the model copies (the repeat's loss under COPIED_LOSS over the last steps)
    or after ``copy_warmup_steps``: when the copying sets in varies from run to run (the
    vocabulary, hence the drills, differ), from 300 steps to over 400.
    """
    started = time.monotonic()
    recent: list[float] = []
    for step in range(settings.copy_warmup_steps):
        lr = settings.learning_rate * min(1.0, (step + 1) / max(1, settings.warmup_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, _ = _summed(world, drill.step(network, optimizer), 0)
        recent = [*recent[-19:], loss]
        copied = len(recent) == 20 and sum(recent) / 20 < COPIED_LOSS
        if (step + 1) % 100 == 0 or copied:
            log.write(
                f"copy warm-up {step + 1}/{settings.copy_warmup_steps}  "
                f"loss {loss:.3f}  {time.monotonic() - started:.0f} s"
                f"{'  (copying)' if copied else ''}\n"
            )
            log.flush()
        if copied:
            return step + 1
    return settings.copy_warmup_steps


# Mean loss on the drills' repeats below which the model copies: a blind guess among the
# vocabulary costs ln(2,000) ≈ 7.6 nats.
COPIED_LOSS = 0.2


_COPY_BATCH = 16
# Tokens copied and random tokens between the two copies, drawn per row. At a fixed distance
# (24, no gap) the drills are learned in 300 steps, and in a 6-minute trial afterwards the digits
# of a forecast cost 0.5 nats each instead of 2.1; at distances of 8 to 56 the drill loss had not
# moved after 400 steps. What the conversations need from the drills is the copying itself (a
# head that writes out the token it attends to); where to look they teach.
_COPY_LENGTH = (24, 24)
_COPY_GAP = (0, 0)


def _replicas_identical(model: Any) -> bool:
    """Whether every process ended with the same weights, as data parallelism must."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        total = sum(float(p.double().sum()) for p in model.parameters())
    low, high = (
        torch.tensor([total], dtype=torch.float64),
        torch.tensor([total], dtype=torch.float64),
    )
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(low.item() == high.item())


def _agree(world: int, go: bool, lr: float, bare: bool) -> tuple[bool, float, bool]:
    """Rank 0's decisions (go on, learning rate, without the tool list) in every process."""
    if world == 1:
        return go, lr, bare
    import torch
    import torch.distributed as dist

    decision = torch.tensor([float(go), lr, float(bare)], dtype=torch.float64)
    dist.broadcast(decision, src=0)
    return bool(decision[0].item()), float(decision[1].item()), bool(decision[2].item())


def _summed(world: int, loss: float, tokens: int) -> tuple[float, int]:
    """The mean loss and the total tokens over the processes."""
    if world == 1:
        return loss, tokens
    import torch
    import torch.distributed as dist

    both = torch.tensor([loss, float(tokens)], dtype=torch.float64)
    dist.all_reduce(both)
    return float(both[0].item()) / world, int(both[1].item())


def _fit_in_parallel(job: _Job, log: _Log) -> dict[str, Any]:
    """Run ``settings.workers`` training processes; relay rank 0's progress to ``log``."""
    import multiprocessing
    import queue as queues
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = replace(job, port=port)
    world = job.settings.workers
    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    workers = [
        context.Process(target=_worker, args=(rank, world, job, channel), daemon=True)
        for rank in range(world)
    ]
    try:
        for worker in workers:
            worker.start()
        while True:
            try:
                kind, value = channel.get(timeout=1.0)
            except queues.Empty:
                codes = [w.exitcode for w in workers]
                failed = [code for code in codes if code not in (None, 0)]
                if failed:
                    raise RuntimeError(
                        f"a training process failed (exit code {failed[0]})"
                    ) from None
                if None not in codes:
                    raise RuntimeError("the training processes ended without a result") from None
                continue
            if kind == "log":
                log.write(value)
                log.flush()
            else:
                summary: dict[str, Any] = value
                break
        for worker in workers:
            # The checkpoint is saved before the summary is sent; a process that lingers after
            # that (gloo's threads can hold one at exit) has nothing left to do.
            worker.join(timeout=60)
        return summary
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()


class _Quiet:
    """A log that drops what it is given (the processes other than rank 0)."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class _Relay:
    """A log that sends rank 0's lines to the parent process."""

    def __init__(self, channel: Any):
        self.channel = channel

    def write(self, text: str) -> None:
        self.channel.put(("log", text))

    def flush(self) -> None:
        pass


def _worker(rank: int, world: int, job: _Job, channel: Any) -> None:
    import os

    import torch

    # Small matrices: two single-threaded processes outrun one process with two threads.
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world))
    # The processes talk over loopback, whatever interface the host name resolves to.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    summary = _fit(rank, world, job, _Relay(channel))
    if rank == 0:
        channel.put(("summary", summary))


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
    return max(100, int(settings.minutes * 60 * 10))


def _learning_rate(settings: TrainSettings, step: int, progress: float) -> float:
    """Linear warm-up, then cosine decay to a tenth over the run's progress (0..1)."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return settings.learning_rate * (0.1 + 0.9 * cosine)
