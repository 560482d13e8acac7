"""One row of `bench model`, measured in a process of its own so that it has its own peak RSS."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

Engine = Literal["ours", "optimum", "transformers", "genai"]


@dataclass(frozen=True, slots=True)
class RowSpec:
    """What a row's process needs; sent as JSON on its command line."""

    engine: Engine
    path: str
    prompt: list[int]
    new_tokens: int
    repeats: int
    threads: int
    # Time to first token is also measured for this longer prompt (if given), and aggregate
    # throughput for each number of concurrent requests (ours and genai only).
    long_prompt: list[int] = field(default_factory=list)
    concurrency: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Timing:
    """Medians over the repeats, each repeat's decode speed, and the last run's tokens."""

    ttft_s: float
    decode_tok_s: float
    decode_tok_s_runs: list[float]
    tokens: list[int]
    ttft_long_s: float | None = None
    # Requests at once → generated tokens per second over all of them, prefill included.
    concurrent_tok_s: dict[str, float] = field(default_factory=dict)
    # Requests at once → the median over rounds of that round's throughput over its own
    # single-request throughput: each round runs every count in turn, so a ratio compares
    # figures taken a few seconds apart, not minutes (this box's speed drifts).
    concurrent_vs_single: dict[str, float] = field(default_factory=dict)


def _rounds(measure: Callable[[int], float], counts: Sequence[int], repeats: int) -> _Timing:
    """Throughput for each count of concurrent requests, the counts interleaved round by round."""
    runs: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(repeats):
        for count in counts:
            runs[count].append(measure(count))
    paired = {}
    if 1 in runs:
        for count, rates in runs.items():
            ratios = [rate / one for rate, one in zip(rates, runs[1], strict=True) if one]
            paired[str(count)] = statistics.median(ratios) if ratios else 0.0
    return _Timing(
        0.0,
        0.0,
        [],
        [],
        concurrent_tok_s={str(c): statistics.median(rates) for c, rates in runs.items()},
        concurrent_vs_single=paired,
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # Only a fallback: Linux carries ru_maxrss across exec, so a child spawned by a big parent
    # reports the parent's peak there; VmHWM belongs to this address space alone.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure_row(spec: RowSpec) -> dict[str, Any]:
    """TTFT, decode speed (median and each repeat) and tokens of one row, then the peak RSS."""
    path = Path(spec.path)
    if spec.engine == "ours":
        timing = _time_ours(path, spec)
    elif spec.engine == "genai":
        timing = _time_genai(path, spec)
    else:
        load = _load_optimum if spec.engine == "optimum" else _load_transformers
        model = load(path, spec.threads)
        timing = _time_generate(_hf_generate(model, spec.prompt), spec)
        if spec.long_prompt:
            long = _hf_generate(model, spec.long_prompt)
            long(1)
            firsts = []
            for _ in range(spec.repeats):
                started = time.perf_counter()
                long(1)
                firsts.append(time.perf_counter() - started)
            timing = replace(timing, ttft_long_s=statistics.median(firsts))
    return {**asdict(timing), "peak_rss_bytes": peak_rss_bytes()}


def _time_ours(graph: Path, spec: RowSpec) -> _Timing:
    """Our Generation on the decoder the daemon would pick for this graph."""
    import asyncio

    from edge_runtime.model.generate import Generation, GenerationParams
    from edge_runtime.model.runtime import (
        GraphLayout,
        Model,
        ModelConfig,
        make_decoder,
        open_session,
        session_options,
    )
    from edge_runtime.model.sampling import SamplingParams
    from edge_runtime.model.tokenizer import ChatTokenizer

    config = ModelConfig.from_directory(graph.parent)
    tokenizer = ChatTokenizer.from_directory(graph.parent)
    session = open_session(graph, session_options(spec.threads))
    window = config.max_position_embeddings
    layout = GraphLayout.of(session, graph)
    rows = max([1, *spec.concurrency])
    decoder = make_decoder(session, layout, window, vocab_size=config.vocab_size, max_batch=rows)
    model = Model(
        graph.parent,
        config=config,
        tokenizer=tokenizer,
        decoder=decoder,
        graph=graph,
        manifest=None,
        context_length=window,
    )

    def generation(prompt: list[int], new_tokens: int) -> Generation:
        # No stop ids: random weights may pick an end-of-turn token, and every row must
        # produce exactly new_tokens.
        params = GenerationParams(max_new_tokens=new_tokens, sampling=SamplingParams())
        return Generation(
            decoder,
            tokenizer.stream_decoder(),
            prompt,
            params,
            eos_token_ids=(),
            context_length=window,
        )

    ttfts, rates, longs, tokens = [], [], [], []
    for attempt in range(spec.repeats + 1):
        result = generation(spec.prompt, spec.new_tokens).run()
        tokens = list(result.token_ids)
        if spec.long_prompt:
            long = generation(spec.long_prompt, 1).run()
        if attempt:
            ttfts.append(result.timing.time_to_first_token_s)
            rates.append(result.decode_tokens_per_s)
            if spec.long_prompt:
                longs.append(long.timing.time_to_first_token_s)

    async def together(count: int) -> float:
        # As the daemon serves them: each request streams through Model.stream.
        async def one() -> None:
            async for _ in model.stream(generation(spec.prompt, spec.new_tokens)):
                pass

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count * spec.new_tokens / (time.perf_counter() - started)

    concurrent = _rounds(lambda count: asyncio.run(together(count)), spec.concurrency, spec.repeats)
    model.close()
    return replace(
        concurrent,
        ttft_s=statistics.median(ttfts),
        decode_tok_s=statistics.median(rates),
        decode_tok_s_runs=rates,
        tokens=tokens,
        ttft_long_s=statistics.median(longs) if longs else None,
    )


def _time_genai(directory: Path, spec: RowSpec) -> _Timing:
    """onnxruntime-genai's own C++ loop on its builder's graph (runs in the anchors venv)."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(directory))

    def run(prompt: list[int], new_tokens: int, batch: int = 1) -> tuple[float, float, list[int]]:
        params = og.GeneratorParams(model)
        total = len(prompt) + new_tokens
        # min_length keeps end-of-turn tokens from ending the run early.
        params.set_search_options(
            do_sample=False, max_length=total, min_length=total, batch_size=batch
        )
        started = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray([prompt] * batch, dtype=np.int32))
        generator.generate_next_token()
        first = time.perf_counter()
        while not generator.is_done():
            generator.generate_next_token()
        finished = time.perf_counter()
        tokens = [int(t) for t in generator.get_sequence(0)[len(prompt) :]]
        return first - started, finished - first, tokens

    ttfts, rates, longs = [], [], []
    tokens: list[int] = []
    for attempt in range(spec.repeats + 1):
        ttft, decode, tokens = run(spec.prompt, spec.new_tokens)
        long = run(spec.long_prompt, 1)[0] if spec.long_prompt else 0.0
        if attempt:
            ttfts.append(ttft)
            rates.append((spec.new_tokens - 1) / decode)
            longs.append(long)

    def together(count: int) -> float:
        ttft, decode, _ = run(spec.prompt, spec.new_tokens, count)
        return count * spec.new_tokens / (ttft + decode)

    concurrent = _rounds(together, spec.concurrency, spec.repeats)
    return replace(
        concurrent,
        ttft_s=statistics.median(ttfts),
        decode_tok_s=statistics.median(rates),
        decode_tok_s_runs=rates,
        tokens=tokens,
        ttft_long_s=statistics.median(longs) if spec.long_prompt else None,
    )


def _time_generate(generate: Callable[[int], list[int]], spec: RowSpec) -> _Timing:
    """TTFT as a 1-token generate; decode speed from the difference to an N-token one."""
    tokens = generate(spec.new_tokens)
    first, full = [], []
    for _ in range(spec.repeats):
        started = time.perf_counter()
        generate(1)
        first.append(time.perf_counter() - started)
        started = time.perf_counter()
        tokens = generate(spec.new_tokens)
        full.append(time.perf_counter() - started)
    steps = spec.new_tokens - 1
    runs = [steps / (n - one) if n > one else 0.0 for one, n in zip(first, full, strict=True)]
    t1, tn = statistics.median(first), statistics.median(full)
    return _Timing(t1, steps / (tn - t1) if tn > t1 else 0.0, runs, tokens)


def _load_transformers(path: Path, threads: int) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def _load_optimum(path: Path, threads: int) -> Any:
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    from edge_runtime.model.runtime import session_options

    # optimum's generate runs the logits processors in torch between onnxruntime calls.
    torch.set_num_threads(threads)
    return ORTModelForCausalLM.from_pretrained(
        str(path.parent),
        file_name=path.name,
        use_cache=True,
        use_io_binding=False,
        provider="CPUExecutionProvider",
        session_options=session_options(threads),
    )


def _hf_generate(model: Any, prompt: Sequence[int]) -> Callable[[int], list[int]]:
    import torch
    from transformers import GenerationConfig

    ids = torch.tensor([list(prompt)], dtype=torch.long)
    mask = torch.ones_like(ids)
    eos, pad = model.config.eos_token_id, model.config.pad_token_id

    def generate(count: int) -> list[int]:
        # min_new_tokens keeps end-of-turn tokens from ending the run early.
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=count,
            min_new_tokens=count,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        with torch.inference_mode():
            # Without use_model_defaults=False, transformers fills every field left at its global
            # default from the checkpoint: do_sample=False would become its do_sample=True.
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                use_model_defaults=False,
            )
        return [int(t) for t in output[0, ids.shape[1] :]]

    return generate


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edge_runtime.bench.model_rows --row SPEC`: one row, one JSON line out."""
    parser = argparse.ArgumentParser(prog="python -m edge_runtime.bench.model_rows")
    parser.add_argument("--row", required=True, help="row spec as JSON (written by run())")
    spec = RowSpec(**json.loads(parser.parse_args(argv).row))
    sys.stdout.write(json.dumps(measure_row(spec)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
