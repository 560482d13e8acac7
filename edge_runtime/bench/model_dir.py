"""`bench model --model DIR`: a model directory's decode speed, our loop beside optimum's."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from edge_runtime.bench.machine import (
    BANDWIDTH_BYTES,
    OtherLoad,
    describe_machine,
    read_bandwidth,
)
from edge_runtime.bench.model import (
    ModelBenchArgs,
    Row,
    _describe_row,
    _number,
    _ratio,
    _run_row,
    _threads,
    prompt_ids,
)
from edge_runtime.bench.model_rows import RowSpec
from edge_runtime.bench.report import markdown_table, percent, times
from edge_runtime.device import probe
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.model.progress import Progress

_MIB = 1 << 20
# A shipped directory holds its INT8 file only (FP32 stays with whoever exported it).
ROWS = (
    Row("ours-int8", "ours", "model_int8.onnx", "INT8 quantize_dynamic"),
    Row("optimum-int8", "optimum", "model_int8.onnx", "INT8 quantize_dynamic"),
)
BASELINE = "optimum-int8"


def run(args: ModelBenchArgs, directory: Path, out: TextIO) -> dict[str, Any]:
    """Measure each row on ``directory``; print the table unless ``args.json``."""
    device = probe()
    threads = args.threads or device.effective_threads
    rows = [row for row in ROWS if (directory / row.file).is_file()]
    if not any(row.name == BASELINE for row in rows):
        raise EdgeRuntimeError(f"{directory} has no model_int8.onnx to measure")
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if args.prompt_tokens + args.new_tokens >= config.get("max_position_embeddings", 2048):
        raise EdgeRuntimeError("prompt_tokens + new_tokens must stay inside the context window")
    progress = Progress(len(rows) + 1)
    prompt = prompt_ids(directory / "tokenizer.json", args.prompt_tokens)
    load = OtherLoad(device.usable_cpus)
    measured: dict[str, dict[str, Any]] = {}
    for row in rows:
        path = directory / row.file
        with progress.step(f"measuring {row.name} ({path.name})"):
            spec = RowSpec(
                row.engine,
                str(path),
                prompt,
                args.new_tokens,
                args.repeats,
                threads,
                concurrency=list(args.concurrency) if row.engine == "ours" else [],
            )
            measured[row.name] = _run_row(row.name, spec, Path(sys.executable))
    with progress.step("measuring memory read bandwidth"):
        size = max(64 * _MIB, min(BANDWIDTH_BYTES, device.memory_available_bytes // 4))
        bandwidth = read_bandwidth(threads, size)
    described = {
        row.name: _describe_row(row, directory / row.file, measured[row.name], bandwidth)
        for row in rows
    }
    base = described[BASELINE]
    for name, figures in described.items():
        tokens = figures.pop("tokens")
        if len(tokens) != args.new_tokens:
            raise EdgeRuntimeError(f"bench row {name} generated {len(tokens)} tokens")
        figures["vs_optimum_int8"] = _ratio(figures["decode_tok_s"], base["decode_tok_s"])
        figures["ttft_vs_optimum_int8"] = _ratio(figures["ttft_ms"], base["ttft_ms"])
    result = {
        "benchmark": "model-directory",
        "machine": describe_machine(device, threads),
        "model": {
            "directory": str(directory),
            "model_type": config.get("model_type"),
            "hidden": config.get("hidden_size"),
            "layers": config.get("num_hidden_layers"),
            "vocab_size": config.get("vocab_size"),
        },
        "settings": {
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "threads": threads,
            "concurrency": list(args.concurrency),
            "sampling": "greedy, no stop tokens",
        },
        "bandwidth": {"read_gb_s": round(bandwidth / 1e9, 2), "threads": threads},
        "rows": described,
        "other_load": load.report(),
    }
    if not args.json:
        out.write(render(result))
    return result


def render(result: dict[str, Any]) -> str:
    """The table, with each row's speed and TTFT against optimum's on the same file."""
    model, s = result["model"], result["settings"]
    lines = [
        f"Model: {model['directory']} ({model['model_type']}, hidden {model['hidden']}, "
        f"{model['layers']} layers, vocabulary {model['vocab_size']})",
        f"Run: {s['prompt_tokens']}-token prompt, {s['new_tokens']} greedy tokens, median of "
        f"{s['repeats']} after a warm-up, {_threads(s['threads'])}",
        "",
    ]
    headers = ["row", "size MiB", "TTFT ms", "decode tok/s", "min-max", "vs optimum-int8"]
    headers += ["TTFT vs optimum", "of ceiling", "peak RSS MiB"]
    headers += [f"{count} at once tok/s" for count in s["concurrency"]]
    body = [
        [
            name,
            f"{row['weights_bytes'] / _MIB:.1f}",
            f"{row['ttft_ms']:.1f}",
            f"{row['decode_tok_s']:.1f}",
            f"{row['decode_tok_s_min']:.0f}-{row['decode_tok_s_max']:.0f}",
            times(row["vs_optimum_int8"]),
            times(row["ttft_vs_optimum_int8"]),
            percent(row["of_ceiling"]),
            f"{row['peak_rss_bytes'] / _MIB:.0f}",
            *[_number(row["concurrent_tok_s"].get(str(count))) for count in s["concurrency"]],
        ]
        for name, row in result["rows"].items()
    ]
    lines += markdown_table(headers, body, left=1)
    return "\n".join(lines) + "\n"
