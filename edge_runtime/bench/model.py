"""`bench model`: our decode loop beside onnxruntime-genai, optimum and transformers, in one run."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
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
from edge_runtime.model.optimize import REWRITE_VERSION
from edge_runtime.model.progress import Progress
from edge_runtime.model.tiny import TinyShape

# Part of the cache key: bump it when the recipe of the cached model changes.
RECIPE = 3
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
    # Time to first token is measured at prompt_tokens and at this longer prompt.
    long_prompt_tokens: int = 512
    concurrency: tuple[int, ...] = (1, 4, 8)
    # Every row runs once per pass, each pass in the reverse order of the one before: this
    # box's speed drifts over minutes, and a row measured only early or only late in the run
    # would carry that drift into its ratios.
    passes: int = 2
    # The Python of the environment onnxruntime-genai is installed in (`make bench-anchors`);
    # without it the genai row is left out and said so.
    anchors_python: Path | None = Path(".venv-anchors/bin/python")

    def __post_init__(self) -> None:
        if self.hidden <= 0 or self.hidden % (HEAD_DIM * KV_HEADS):
            raise ValueError(f"hidden must be a positive multiple of {HEAD_DIM * KV_HEADS}")
        if min(self.layers, self.prompt_tokens, self.repeats, self.passes) < 1 or self.threads < 0:
            raise ValueError("layers, prompt_tokens, repeats and passes must be >= 1, threads >= 0")
        if self.new_tokens < 2:
            raise ValueError("new_tokens must be >= 2 (decode speed needs a second token)")
        if max(self.prompt_tokens, self.long_prompt_tokens) + self.new_tokens >= MAX_POSITIONS:
            raise ValueError(f"prompt_tokens + new_tokens must stay below {MAX_POSITIONS}")
        if self.long_prompt_tokens < 0 or any(c < 1 for c in self.concurrency):
            raise ValueError("long_prompt_tokens must be >= 0 and concurrency counts >= 1")
        if len(set(self.concurrency)) < len(self.concurrency):
            raise ValueError("concurrency counts must differ")


@dataclass(frozen=True, slots=True)
class Row:
    """One contender: an engine on one weights file of the cached model."""

    name: str
    engine: Engine
    file: str
    weights: str


ROWS = (
    Row("genai-int8", "genai", "genai/model.onnx", "INT8 MatMulNBits acc4 (its builder)"),
    Row("ours-opt-int8", "ours", "opt/model_int8.onnx", "INT8 quantize_dynamic, rewritten"),
    Row("ours-opt-nbits8", "ours", "opt/model_nbits8.onnx", "INT8 MatMulNBits acc4, rewritten"),
    Row("ours-opt-fp32", "ours", "opt/model.onnx", "FP32, rewritten"),
    Row("ours-int8", "ours", "onnx/model_int8.onnx", "INT8 quantize_dynamic"),
    Row("ours-nbits8", "ours", "onnx/model_nbits8.onnx", "INT8 MatMulNBits acc4"),
    Row("ours-fp32", "ours", "onnx/model.onnx", "FP32"),
    Row("optimum-int8", "optimum", "onnx/model_int8.onnx", "INT8 quantize_dynamic"),
    Row("optimum-fp32", "optimum", "onnx/model.onnx", "FP32"),
    Row("transformers-fp32", "transformers", "hf/model.safetensors", "FP32 eager"),
)
BASELINE = "ours-fp32"
ANCHOR = "genai-int8"


def merge_passes(passes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row's figures over its passes: decode speed over every repeat of every pass, TTFT
    and throughput as the median of the passes' own medians, the highest peak RSS."""
    first = passes[0]
    for other in passes[1:]:
        if other["tokens"] != first["tokens"]:
            raise EdgeRuntimeError("a row generated different greedy tokens in two passes")

    def middle(key: str) -> float:
        return float(statistics.median(p[key] for p in passes))

    counts = first.get("concurrent_tok_s", {})
    return {
        **first,
        "ttft_s": middle("ttft_s"),
        "ttft_long_s": None if first["ttft_long_s"] is None else middle("ttft_long_s"),
        "decode_tok_s_runs": [r for p in passes for r in p["decode_tok_s_runs"]],
        "decode_tok_s": statistics.median(r for p in passes for r in p["decode_tok_s_runs"]),
        "concurrent_tok_s": {
            c: statistics.median(p["concurrent_tok_s"][c] for p in passes) for c in counts
        },
        "concurrent_vs_single": {
            c: statistics.median(p["concurrent_vs_single"][c] for p in passes)
            for c in first.get("concurrent_vs_single", {})
        },
        "peak_rss_bytes": max(p["peak_rss_bytes"] for p in passes),
    }


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
    # The rewrite's version too: the cached opt/ graphs are rewritten by it.
    entry = args.cache_dir / f"glm-h{args.hidden}-l{args.layers}-r{RECIPE}-w{REWRITE_VERSION}"
    anchors = args.anchors_python if _runs(args.anchors_python) else None
    skipped = {}
    if anchors is None:
        skipped[ANCHOR] = "no onnxruntime-genai environment (make bench-anchors)"
    rows_run = [row for row in ROWS if row.name not in skipped]
    built = all((entry / row.file).is_file() for row in rows_run)
    progress = Progress((0 if built else 11) + 1 + len(rows_run) * args.passes)
    if not built:
        _build(entry, shape, threads, progress, anchors)
    tokenizer = entry / "onnx" / "tokenizer.json"
    prompt = prompt_ids(tokenizer, args.prompt_tokens)
    long_prompt = prompt_ids(tokenizer, args.long_prompt_tokens) if args.long_prompt_tokens else []
    load = OtherLoad(device.usable_cpus)
    passes: dict[str, list[dict[str, Any]]] = {row.name: [] for row in rows_run}
    for index in range(args.passes):
        for row in rows_run if index % 2 == 0 else rows_run[::-1]:
            path = entry / row.file
            with progress.step(f"measuring {row.name} ({row.weights}, {path.name})"):
                spec = RowSpec(
                    row.engine,
                    str(path.parent if row.engine == "genai" else path),
                    prompt,
                    args.new_tokens,
                    args.repeats,
                    threads,
                    long_prompt=long_prompt,
                    concurrency=list(args.concurrency) if row.engine in ("ours", "genai") else [],
                )
                python = anchors if row.engine == "genai" and anchors else Path(sys.executable)
                found = _run_row(row.name, spec, python)
                passes[row.name].append(found)
                progress.note(
                    f"TTFT {found['ttft_s'] * 1e3:.1f} ms, decode {found['decode_tok_s']:.1f} "
                    f"tok/s, peak RSS {found['peak_rss_bytes'] / _MIB:.0f} MiB"
                )
    measured = {name: merge_passes(found) for name, found in passes.items()}
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
        for row in rows_run
    }
    _compare(rows, args.new_tokens)
    result = {
        "benchmark": "model",
        "machine": describe_machine(device, threads),
        "model": _describe_model(entry, shape),
        "settings": {
            "prompt_tokens": args.prompt_tokens,
            "long_prompt_tokens": args.long_prompt_tokens,
            "concurrency": list(args.concurrency),
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "passes": args.passes,
            "threads": threads,
            # Every onnxruntime row, genai's included, lets its worker threads spin.
            "allow_spinning": True,
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
        "skipped": skipped,
        "ratios": _ratios(rows),
        "other_load": load.report(),
    }
    if not args.json:
        out.write(render(result))
    return result


def _build(
    entry: Path, shape: TinyShape, threads: int, progress: Progress, anchors: Path | None
) -> None:
    """The seeded-random checkpoint and every graph the rows run, in ``entry``.

    ``onnx/``: optimum's graph as exported (FP32, quantize_dynamic, MatMulNBits); ``opt/``: the
    same graph rewritten by `model optimize`, then quantized both ways; ``genai/``:
    onnxruntime-genai's builder on the same weights (with ``anchors``, its environment).
    """
    from edge_runtime.config import QuantizationSettings
    from edge_runtime.model.export import (
        PARITY_PROMPTS,
        TOKENIZER_FILES,
        ExportOptions,
        export_model,
        quantize,
    )
    from edge_runtime.model.optimize import optimize_graph
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
            optimize=False,
        )
        onnx_dir, opt_dir = work / "onnx", work / "opt"
        export_model(work / "hf", onnx_dir, options, progress)
        nbits = QuantizationSettings(scheme="matmul_nbits")
        with progress.step("quantizing to INT8 (matmul_nbits) for the extra row"):
            quantize(onnx_dir / "model.onnx", onnx_dir / "model_nbits8.onnx", nbits)
        with progress.step("rewriting the FP32 graph (GroupQueryAttention, in-place cache)"):
            opt_dir.mkdir()
            for name in ("config.json", "generation_config.json", *TOKENIZER_FILES):
                if (onnx_dir / name).is_file():
                    shutil.copyfile(onnx_dir / name, opt_dir / name)
            config = SimpleNamespace(**json.loads((onnx_dir / "config.json").read_text()))
            optimize_graph(onnx_dir / "model.onnx", opt_dir / "model.onnx", config)
        with progress.step("quantizing the rewritten graph (quantize_dynamic, matmul_nbits)"):
            quantize(opt_dir / "model.onnx", opt_dir / "model_int8.onnx", QuantizationSettings())
            quantize(opt_dir / "model.onnx", opt_dir / "model_nbits8.onnx", nbits)
        if anchors is not None:
            with progress.step("building onnxruntime-genai's INT8 graph of the same weights"):
                _build_genai(anchors, work, threads)
        if entry.exists():
            shutil.rmtree(entry)
        work.rename(entry)
    finally:
        if work.exists():
            shutil.rmtree(work)


def _build_genai(python: Path, work: Path, threads: int) -> None:
    """Its builder knows ChatGLM, whose graph GLM's is: a relabelled copy of the checkpoint."""
    source = work / "hf-chatglm"
    shutil.copytree(work / "hf", source)
    config = json.loads((source / "config.json").read_text())
    config["architectures"] = ["ChatGLMModel"]
    (source / "config.json").write_text(json.dumps(config, indent=2))
    command = [str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(source)]
    command += ["-o", str(work / "genai"), "-p", "int8", "-e", "cpu"]
    command += ["-c", str(work / "genai-cache"), "--extra_options", "accuracy_level=4"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise EdgeRuntimeError(f"onnxruntime-genai's builder failed:\n{tail}")
    shutil.rmtree(work / "genai-cache", ignore_errors=True)
    shutil.rmtree(source)
    # The same threads as every other row.
    path = work / "genai" / "genai_config.json"
    genai = json.loads(path.read_text())
    options = genai["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    options["inter_op_num_threads"] = 1
    path.write_text(json.dumps(genai, indent=2))


def _runs(python: Path | None) -> bool:
    """Whether ``python`` exists and can import onnxruntime_genai."""
    if python is None or not python.is_file():
        return False
    check = [str(python), "-c", "import onnxruntime_genai"]
    return subprocess.run(check, capture_output=True, check=False).returncode == 0


def prompt_ids(tokenizer_json: Path, count: int) -> list[int]:
    """Exactly ``count`` ids of a fixed English text, repeated as often as needed."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    piece: list[int] = tokenizer.encode(PROMPT_TEXT, add_special_tokens=False).ids
    return (piece * (count // len(piece) + 1))[:count]


def _run_row(name: str, spec: RowSpec, python: Path) -> dict[str, Any]:
    """Measure one row in a fresh interpreter, so each row has its own peak RSS."""
    root = str(Path(edge_runtime.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    command = [str(python), "-m", "edge_runtime.bench.model_rows"]
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
    long = measured.get("ttft_long_s")
    return {
        "engine": row.engine,
        "weights": row.weights,
        "file": row.file,
        "weights_bytes": size,
        "ttft_ms": round(measured["ttft_s"] * 1e3, 2),
        "ttft_long_ms": round(long * 1e3, 2) if long is not None else None,
        "decode_tok_s": round(measured["decode_tok_s"], 2),
        "decode_tok_s_min": round(min(measured["decode_tok_s_runs"]), 2),
        "decode_tok_s_max": round(max(measured["decode_tok_s_runs"]), 2),
        "concurrent_tok_s": {
            count: round(rate, 2) for count, rate in measured.get("concurrent_tok_s", {}).items()
        },
        "concurrent_vs_single": {
            count: round(ratio, 3)
            for count, ratio in measured.get("concurrent_vs_single", {}).items()
        },
        "peak_rss_bytes": measured["peak_rss_bytes"],
        "ceiling_tok_s": round(ceiling, 2),
        "of_ceiling": round(measured["decode_tok_s"] / ceiling, 3),
        "tokens": measured["tokens"],
    }


def _compare(rows: dict[str, dict[str, Any]], new_tokens: int) -> None:
    """Each row against our FP32 loop and onnxruntime-genai: speed, latency, greedy agreement."""
    base_speed = rows[BASELINE]["decode_tok_s"]
    base_tokens = rows[BASELINE]["tokens"]
    anchor = rows.get(ANCHOR)
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
        concurrent = row["concurrent_tok_s"]
        if anchor is None:
            continue
        row["vs_genai"] = {
            "decode": _ratio(row["decode_tok_s"], anchor["decode_tok_s"]),
            "ttft": _ratio(row["ttft_ms"], anchor["ttft_ms"]),
            "ttft_long": _ratio(row["ttft_long_ms"] or 0, anchor["ttft_long_ms"] or 0),
            "concurrent": {
                count: _ratio(rate, anchor["concurrent_tok_s"].get(count, 0))
                for count, rate in concurrent.items()
            },
        }


def _ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def speed(a: str, b: str) -> float | None:
        return _ratio(rows[a]["decode_tok_s"], rows[b]["decode_tok_s"])

    def size(a: str, b: str) -> float | None:
        return _ratio(rows[a]["weights_bytes"], rows[b]["weights_bytes"])

    def ttft(a: str, b: str) -> float | None:
        return _ratio(rows[a]["ttft_ms"], rows[b]["ttft_ms"])

    return {
        "opt_int8_vs_int8_decode": speed("ours-opt-int8", "ours-int8"),
        "opt_nbits8_vs_nbits8_decode": speed("ours-opt-nbits8", "ours-nbits8"),
        "opt_int8_vs_opt_nbits8_decode": speed("ours-opt-int8", "ours-opt-nbits8"),
        "opt_int8_vs_int8_ttft": ttft("ours-opt-int8", "ours-int8"),
        "int8_vs_fp32_decode": speed("ours-int8", "ours-fp32"),
        "int8_size_of_fp32": size("ours-int8", "ours-fp32"),
        "nbits8_vs_fp32_decode": speed("ours-nbits8", "ours-fp32"),
        "nbits8_size_of_fp32": size("ours-nbits8", "ours-fp32"),
        "int8_vs_fp32_ttft": ttft("ours-int8", "ours-fp32"),
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
        f"{s['repeats']} after a warm-up"
        + (
            f" in each of {s['passes']} passes (the second in reverse row order)"
            if s.get("passes", 1) > 1
            else ""
        )
        + f", {_threads(s['threads'])}"
        + (", spinning" if s.get("allow_spinning") else ""),
        f"Machine: {m['cpu_model']} ({m['arch']}), {m['physical_cores']} cores, "
        f"{m['memory_total_bytes'] / (1 << 30):.1f} GiB, ISA {' '.join(m['isa']) or '-'}, "
        f"L3 {m['cache_bytes'].get('L3', 0) / _MIB:.0f} MiB",
        f"Memory read bandwidth: {bw['read_gb_s']:.1f} GB/s ({_threads(bw['threads'])}); "
        "ceiling = bandwidth / weights bytes per token",
        "",
    ]
    counts = s["concurrency"]
    long = s["long_prompt_tokens"]
    headers = ["row", "size MiB", f"TTFT {s['prompt_tokens']} ms", f"TTFT {long} ms"]
    headers += ["decode tok/s", "min-max", "of ceiling"]
    headers += [f"{count} at once tok/s" for count in counts]
    headers += ["peak RSS MiB", "vs genai decode", "vs genai TTFT"]
    body = []
    for name, row in result["rows"].items():
        versus = row.get("vs_genai", {})
        body.append(
            [
                name,
                f"{row['weights_bytes'] / _MIB:.1f}",
                f"{row['ttft_ms']:.1f}",
                _number(row["ttft_long_ms"]),
                f"{row['decode_tok_s']:.1f}",
                f"{row['decode_tok_s_min']:.0f}-{row['decode_tok_s_max']:.0f}",
                percent(row["of_ceiling"]),
                *[_number(row["concurrent_tok_s"].get(str(count))) for count in counts],
                f"{row['peak_rss_bytes'] / _MIB:.0f}",
                times(versus.get("decode")),
                times(versus.get("ttft")),
            ]
        )
    lines += markdown_table(headers, body, left=1)
    paired = [
        f"{name} " + ", ".join(f"{c}: {times(r)}" for c, r in row["concurrent_vs_single"].items())
        for name, row in result["rows"].items()
        if len(row["concurrent_vs_single"]) > 1
    ]
    if paired:
        lines += [
            "",
            "N at once ÷ 1 at once, each round's own ratio (median): " + "; ".join(paired),
        ]
    for name, why in result["skipped"].items():
        lines += ["", f"{name}: not run: {why}"]
    load = result["other_load"]
    if load["share_of_capacity"] > 0.05:
        lines += [
            "",
            f"WARNING: other processes used {load['cpu_seconds']:.0f} CPU s "
            f"({percent(load['share_of_capacity'])} of the box) while rows ran; rerun when idle.",
        ]
    lines += [
        "",
        "Rewritten vs as exported: quantize_dynamic decode "
        f"{times(ratios['opt_int8_vs_int8_decode'])}, "
        f"TTFT {times(ratios['opt_int8_vs_int8_ttft'])}; MatMulNBits decode "
        f"{times(ratios['opt_nbits8_vs_nbits8_decode'])}; rewritten quantize_dynamic vs "
        f"MatMulNBits decode {times(ratios['opt_int8_vs_opt_nbits8_decode'])}",
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


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _threads(count: int) -> str:
    return f"{count} thread" if count == 1 else f"{count} threads"
