"""`bench model`: our decode loop on INT8 and FP32 beside transformers and optimum, in one run."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import edge_runtime
from edge_runtime.bench.machine import (
    BANDWIDTH_BYTES,
    OtherLoad,
    describe_machine,
    read_bandwidth,
)
from edge_runtime.bench.model_rows import Engine, RowSpec
from edge_runtime.bench.report import markdown_table, percent, times
from edge_runtime.device import probe
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.model.progress import Progress
from edge_runtime.model.tiny import TinyShape

# Part of the cache key: bump it when the recipe of the cached model changes.
RECIPE = 1
SEED = 0
HEAD_DIM = 64
KV_HEADS = 2
MAX_POSITIONS = 2048
PROMPT_TEXT = (
    "The kitchen sensor reports twenty-one degrees and the living room light is still on. "
    "Please check whether the garage door is closed, remind me to water the plants at seven, "
    "and tell me what the weather in Berlin will be tomorrow morning. "
)
_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelBenchArgs:
    """What `bench model` measures, and where it keeps the model it builds for that."""

    json: bool
    cache_dir: Path = Path(".cache/bench-model")
    prompt_tokens: int = 64
    new_tokens: int = 64
    repeats: int = 3
    # 0: the physical cores this process may use.
    threads: int = 0
    hidden: int = 1024
    layers: int = 8

    def __post_init__(self) -> None:
        if self.hidden <= 0 or self.hidden % (HEAD_DIM * KV_HEADS):
            raise ValueError(f"hidden must be a positive multiple of {HEAD_DIM * KV_HEADS}")
        if self.layers < 1 or self.prompt_tokens < 1 or self.repeats < 1 or self.threads < 0:
            raise ValueError("layers, prompt_tokens and repeats must be >= 1, threads >= 0")
        if self.new_tokens < 2:
            raise ValueError("new_tokens must be >= 2 (decode speed needs a second token)")
        if self.prompt_tokens + self.new_tokens >= MAX_POSITIONS:
            raise ValueError(f"prompt_tokens + new_tokens must stay below {MAX_POSITIONS}")


@dataclass(frozen=True, slots=True)
class Row:
    """One contender: an engine on one weights file of the cached model."""

    name: str
    engine: Engine
    file: str
    weights: str


ROWS = (
    Row("ours-int8", "ours", "onnx/model_int8.onnx", "INT8 quantize_dynamic"),
    Row("ours-nbits8", "ours", "onnx/model_nbits8.onnx", "INT8 MatMulNBits acc4"),
    Row("ours-fp32", "ours", "onnx/model.onnx", "FP32"),
    Row("optimum-int8", "optimum", "onnx/model_int8.onnx", "INT8 quantize_dynamic"),
    Row("optimum-fp32", "optimum", "onnx/model.onnx", "FP32"),
    Row("transformers-fp32", "transformers", "hf/model.safetensors", "FP32 eager"),
)
BASELINE = "ours-fp32"


def model_shape(hidden: int, layers: int) -> TinyShape:
    """GLM-4's proportions at ``hidden`` width: 64-wide heads, 2 KV heads, MLP ≈ 2.75×."""
    heads = hidden // HEAD_DIM
    return TinyShape(
        hidden_size=hidden,
        intermediate_size=(hidden * 11 // 4 + 63) // 64 * 64,
        layers=layers,
        heads=heads,
        kv_heads=min(KV_HEADS, heads),
        head_dim=HEAD_DIM,
        max_positions=MAX_POSITIONS,
    )


def run(args: ModelBenchArgs, out: TextIO) -> dict[str, Any]:
    """Build (or reuse) the model, measure every row, print the table unless ``args.json``."""
    device = probe()
    threads = args.threads or device.effective_threads
    shape = model_shape(args.hidden, args.layers)
    entry = args.cache_dir / f"glm-h{args.hidden}-l{args.layers}-r{RECIPE}"
    built = all((entry / row.file).is_file() for row in ROWS)
    progress = Progress((0 if built else 8) + 1 + len(ROWS))
    if not built:
        _build(entry, shape, threads, progress)
    prompt = prompt_ids(entry / "onnx" / "tokenizer.json", args.prompt_tokens)
    load = OtherLoad(device.usable_cpus)
    measured: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        path = entry / row.file
        with progress.step(f"measuring {row.name} ({row.weights}, {path.name})"):
            spec = RowSpec(row.engine, str(path), prompt, args.new_tokens, args.repeats, threads)
            measured[row.name] = found = _run_row(row.name, spec)
            progress.note(
                f"TTFT {found['ttft_s'] * 1e3:.1f} ms, decode {found['decode_tok_s']:.1f} tok/s, "
                f"peak RSS {found['peak_rss_bytes'] / _MIB:.0f} MiB"
            )
    # After the rows: a 1 GiB scan flushes the caches the rows' weights may live in.
    with progress.step("measuring memory read bandwidth"):
        size = max(64 * _MIB, min(BANDWIDTH_BYTES, device.memory_available_bytes // 4))
        bandwidth = read_bandwidth(threads, size)
        single = bandwidth if threads == 1 else read_bandwidth(1, size)
        progress.note(
            f"{bandwidth / 1e9:.1f} GB/s ({_threads(threads)}), {single / 1e9:.1f} with 1"
        )
    rows = {
        row.name: _describe_row(row, entry / row.file, measured[row.name], bandwidth)
        for row in ROWS
    }
    _compare(rows, args.new_tokens)
    result = {
        "benchmark": "model",
        "machine": describe_machine(device, threads),
        "model": _describe_model(entry, shape),
        "settings": {
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "threads": threads,
            "sampling": "greedy, no stop tokens",
            "method": (
                "ours: TTFT and decode from the Generation's own clock; optimum and "
                "transformers: TTFT = generate(1 token), decode = (N-1) / (t(N) - t(1))"
            ),
        },
        "bandwidth": {
            "read_gb_s": round(bandwidth / 1e9, 2),
            "read_gb_s_one_thread": round(single / 1e9, 2),
            "threads": threads,
            "array_bytes": size,
        },
        "rows": rows,
        "ratios": _ratios(rows),
        "other_load": load.report(),
    }
    if not args.json:
        out.write(render(result))
    return result


def _build(entry: Path, shape: TinyShape, threads: int, progress: Progress) -> None:
    """The seeded-random checkpoint, its FP32/INT8 export and a MatMulNBits copy, in ``entry``."""
    from edge_runtime.config import QuantizationSettings
    from edge_runtime.model.export import PARITY_PROMPTS, ExportOptions, export_model, quantize
    from edge_runtime.model.tiny import make_checkpoint

    entry.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the entry and renamed into place: an interrupted build never looks cached.
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        with progress.step(f"writing a seeded-random GLM checkpoint ({_shape_text(shape)})"):
            make_checkpoint(work / "hf", seed=SEED, shape=shape)
        options = ExportOptions(
            keep_fp32=True,
            threads=threads,
            parity_prompts=PARITY_PROMPTS[:4],
            parity_tokens=16,
            name=entry.name,
            source_label=f"bench-model: GlmForCausalLM, random weights (seed {SEED})",
        )
        export_model(work / "hf", work / "onnx", options, progress)
        with progress.step("quantizing to INT8 (matmul_nbits) for the extra row"):
            quantize(
                work / "onnx" / "model.onnx",
                work / "onnx" / "model_nbits8.onnx",
                QuantizationSettings(scheme="matmul_nbits"),
            )
        if entry.exists():
            shutil.rmtree(entry)
        work.rename(entry)
    finally:
        if work.exists():
            shutil.rmtree(work)


def prompt_ids(tokenizer_json: Path, count: int) -> list[int]:
    """Exactly ``count`` ids of a fixed English text, repeated as often as needed."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    piece: list[int] = tokenizer.encode(PROMPT_TEXT, add_special_tokens=False).ids
    return (piece * (count // len(piece) + 1))[:count]


def _run_row(name: str, spec: RowSpec) -> dict[str, Any]:
    """Measure one row in a fresh interpreter, so each row has its own peak RSS."""
    root = str(Path(edge_runtime.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "edge_runtime.bench.model_rows"]
    command += ["--row", json.dumps(asdict(spec))]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise EdgeRuntimeError(f"bench row {name} failed (exit {done.returncode}):\n{tail}")
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def _describe_row(
    row: Row, path: Path, measured: dict[str, Any], bandwidth: float
) -> dict[str, Any]:
    size = weights_bytes(path)
    ceiling = bandwidth / size
    return {
        "engine": row.engine,
        "weights": row.weights,
        "file": row.file,
        "weights_bytes": size,
        "ttft_ms": round(measured["ttft_s"] * 1e3, 2),
        "decode_tok_s": round(measured["decode_tok_s"], 2),
        "decode_tok_s_min": round(min(measured["decode_tok_s_runs"]), 2),
        "decode_tok_s_max": round(max(measured["decode_tok_s_runs"]), 2),
        "peak_rss_bytes": measured["peak_rss_bytes"],
        "ceiling_tok_s": round(ceiling, 2),
        "of_ceiling": round(measured["decode_tok_s"] / ceiling, 3),
        "tokens": measured["tokens"],
    }


def _compare(rows: dict[str, dict[str, Any]], new_tokens: int) -> None:
    """Each row's speed relative to our FP32 loop, and how long its greedy output agrees."""
    base_speed = rows[BASELINE]["decode_tok_s"]
    base_tokens = rows[BASELINE]["tokens"]
    for name, row in rows.items():
        tokens = row.pop("tokens")
        if len(tokens) != new_tokens:
            raise EdgeRuntimeError(f"bench row {name} generated {len(tokens)} of {new_tokens}")
        row["vs_ours_fp32"] = _ratio(row["decode_tok_s"], base_speed)
        agree = 0
        while agree < new_tokens and tokens[agree] == base_tokens[agree]:
            agree += 1
        # Random weights give flat logits, so INT8 rows may diverge early; FP32 rows should not.
        row["same_tokens_as_ours_fp32"] = agree


def _ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def speed(a: str, b: str) -> float | None:
        return _ratio(rows[a]["decode_tok_s"], rows[b]["decode_tok_s"])

    def size(a: str, b: str) -> float | None:
        return _ratio(rows[a]["weights_bytes"], rows[b]["weights_bytes"])

    return {
        "int8_vs_fp32_decode": speed("ours-int8", "ours-fp32"),
        "int8_size_of_fp32": size("ours-int8", "ours-fp32"),
        "nbits8_vs_fp32_decode": speed("ours-nbits8", "ours-fp32"),
        "nbits8_size_of_fp32": size("ours-nbits8", "ours-fp32"),
        "int8_vs_fp32_ttft": _ratio(rows["ours-int8"]["ttft_ms"], rows["ours-fp32"]["ttft_ms"]),
        "ours_fp32_vs_optimum_fp32": speed("ours-fp32", "optimum-fp32"),
        "ours_int8_vs_optimum_int8": speed("ours-int8", "optimum-int8"),
        "ours_fp32_vs_transformers_fp32": speed("ours-fp32", "transformers-fp32"),
        "ours_int8_vs_transformers_fp32": speed("ours-int8", "transformers-fp32"),
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def weights_bytes(path: Path) -> int:
    """Bytes of a weights file with its external-data companions (`model.onnx_data`, ...)."""
    return sum(
        p.stat().st_size
        for p in path.parent.iterdir()
        if p.name == path.name or p.name.startswith((f"{path.name}_", f"{path.name}."))
    )


def _describe_model(entry: Path, shape: TinyShape) -> dict[str, Any]:
    from edge_runtime.model.manifest import read_manifest

    config = json.loads((entry / "hf" / "config.json").read_text(encoding="utf-8"))
    return {
        "directory": str(entry),
        "architecture": "GlmForCausalLM (seeded random weights)",
        "parameters": _parameter_count(entry / "hf" / "model.safetensors"),
        "hidden": shape.hidden_size,
        "intermediate": shape.intermediate_size,
        "layers": shape.layers,
        "heads": shape.heads,
        "kv_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": config["vocab_size"],
        "parity": [p.model_dump() for p in read_manifest(entry / "onnx").parity],
    }


def _parameter_count(safetensors: Path) -> int:
    """Parameters listed in a safetensors header, without loading the tensors."""
    with safetensors.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header: dict[str, Any] = json.loads(handle.read(length))
    return sum(math.prod(t["shape"]) for key, t in header.items() if key != "__metadata__")


def _shape_text(shape: TinyShape) -> str:
    return (
        f"hidden {shape.hidden_size}, {shape.layers} layers, {shape.heads}/{shape.kv_heads} heads"
    )


def render(result: dict[str, Any]) -> str:
    """The human-readable report: context lines, the table, the ratios."""
    model, s, m, bw = result["model"], result["settings"], result["machine"], result["bandwidth"]
    ratios = result["ratios"]
    lines = [
        f"Model: GLM, {model['parameters'] / 1e6:.1f}M parameters (hidden {model['hidden']}, "
        f"{model['layers']} layers, {model['heads']}/{model['kv_heads']} heads, vocabulary "
        f"{model['vocab_size']}), random weights",
        f"Run: {s['prompt_tokens']}-token prompt, {s['new_tokens']} greedy tokens, median of "
        f"{s['repeats']} after a warm-up, {_threads(s['threads'])}",
        f"Machine: {m['cpu_model']} ({m['arch']}), {m['physical_cores']} cores, "
        f"{m['memory_total_bytes'] / (1 << 30):.1f} GiB, ISA {' '.join(m['isa']) or '-'}, "
        f"L3 {m['cache_bytes'].get('L3', 0) / _MIB:.0f} MiB",
        f"Memory read bandwidth: {bw['read_gb_s']:.1f} GB/s ({_threads(bw['threads'])}); "
        "ceiling = bandwidth / weights bytes per token",
        "",
    ]
    headers = ["row", "weights", "size MiB", "TTFT ms", "decode tok/s", "min-max", "vs ours-fp32"]
    headers += ["ceiling tok/s", "of ceiling", "peak RSS MiB"]
    body = [
        [
            name,
            row["weights"],
            f"{row['weights_bytes'] / _MIB:.1f}",
            f"{row['ttft_ms']:.1f}",
            f"{row['decode_tok_s']:.1f}",
            f"{row['decode_tok_s_min']:.0f}-{row['decode_tok_s_max']:.0f}",
            times(row["vs_ours_fp32"]),
            f"{row['ceiling_tok_s']:.0f}",
            percent(row["of_ceiling"]),
            f"{row['peak_rss_bytes'] / _MIB:.0f}",
        ]
        for name, row in result["rows"].items()
    ]
    lines += markdown_table(headers, body, left=2)
    load = result["other_load"]
    if load["share_of_capacity"] > 0.05:
        lines += [
            "",
            f"WARNING: other processes used {load['cpu_seconds']:.0f} CPU s "
            f"({percent(load['share_of_capacity'])} of the box) while rows ran; rerun when idle.",
        ]
    lines += [
        "",
        f"INT8 quantize_dynamic vs FP32 (our loop): decode {times(ratios['int8_vs_fp32_decode'])}"
        f", size {percent(ratios['int8_size_of_fp32'])} of FP32",
        f"INT8 MatMulNBits vs FP32 (our loop): decode {times(ratios['nbits8_vs_fp32_decode'])}"
        f", size {percent(ratios['nbits8_size_of_fp32'])} of FP32",
        f"Our loop vs optimum: FP32 {times(ratios['ours_fp32_vs_optimum_fp32'])}, "
        f"INT8 {times(ratios['ours_int8_vs_optimum_int8'])}; vs transformers eager FP32: "
        f"FP32 {times(ratios['ours_fp32_vs_transformers_fp32'])}, "
        f"INT8 {times(ratios['ours_int8_vs_transformers_fp32'])}",
    ]
    return "\n".join(lines) + "\n"


def _threads(count: int) -> str:
    return f"{count} thread" if count == 1 else f"{count} threads"
