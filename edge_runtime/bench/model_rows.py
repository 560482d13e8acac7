"""One row of `bench model`, measured in a process of its own so that it has its own peak RSS."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Engine = Literal["ours", "optimum", "transformers"]


@dataclass(frozen=True, slots=True)
class RowSpec:
    """What a row's process needs; sent as JSON on its command line."""

    engine: Engine
    path: str
    prompt: list[int]
    new_tokens: int
    repeats: int
    threads: int


@dataclass(frozen=True, slots=True)
class _Timing:
    """Medians over the repeats, each repeat's decode speed, and the last run's tokens."""

    ttft_s: float
    decode_tok_s: float
    decode_tok_s_runs: list[float]
    tokens: list[int]


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
    else:
        load = _load_optimum if spec.engine == "optimum" else _load_transformers
        timing = _time_generate(_hf_generate(load(path, spec.threads), spec.prompt), spec)
    return {**asdict(timing), "peak_rss_bytes": peak_rss_bytes()}


def _time_ours(graph: Path, spec: RowSpec) -> _Timing:
    from edge_runtime.model.generate import Generation, GenerationParams
    from edge_runtime.model.runtime import (
        GraphLayout,
        ModelConfig,
        OnnxDecoder,
        open_session,
        session_options,
    )
    from edge_runtime.model.sampling import SamplingParams
    from edge_runtime.model.tokenizer import ChatTokenizer

    config = ModelConfig.from_directory(graph.parent)
    tokenizer = ChatTokenizer.from_directory(graph.parent)
    session = open_session(graph, session_options(spec.threads))
    window = config.max_position_embeddings
    decoder = OnnxDecoder(session, GraphLayout.of(session, graph), window)
    params = GenerationParams(max_new_tokens=spec.new_tokens, sampling=SamplingParams())
    ttfts, rates, tokens = [], [], []
    for attempt in range(spec.repeats + 1):
        # No stop ids: random weights may pick an end-of-turn token, and every row must
        # produce exactly new_tokens.
        generation = Generation(
            decoder,
            tokenizer.stream_decoder(),
            spec.prompt,
            params,
            eos_token_ids=(),
            context_length=window,
        )
        result = generation.run()
        tokens = list(result.token_ids)
        if attempt:
            ttfts.append(result.timing.time_to_first_token_s)
            rates.append(result.decode_tokens_per_s)
    return _Timing(statistics.median(ttfts), statistics.median(rates), rates, tokens)


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
