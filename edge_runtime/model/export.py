"""Hugging Face GLM checkpoint → ONNX (optimum) → INT8, with a manifest and parity figures.

This module is the workstation side: it needs the ``export`` extra (torch, transformers,
optimum). Nothing here is imported by the daemon.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from edge_runtime.config import QuantizationSettings
from edge_runtime.errors import ExportError
from edge_runtime.model.generate import Decoder
from edge_runtime.model.manifest import Manifest, Parity, Quantization, Source, describe_files
from edge_runtime.model.optimize import (
    KV_CACHE_SHARED,
    LOGITS_LAST_PER_ROW,
    REWRITE_VERSION,
    RewriteReport,
    optimize_graph,
)
from edge_runtime.model.progress import Progress
from edge_runtime.model.runtime import GraphLayout, make_decoder, open_session, session_options
from edge_runtime.model.tokenizer import ChatTokenizer

SUPPORTED_TYPES = ("glm", "glm4")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
TWO_GB = 2 * 1024**3

# Conversations the parity figures are measured on: short, mixed English and Chinese.
PARITY_PROMPTS = (
    "What is the temperature in the kitchen?",
    "Turn on the light in the living room.",
    "Remind me to water the plants at 7.",
    "What will the weather be in Berlin tomorrow?",
    "厨房的温度是多少？",
    "请打开卧室的灯。",
    "明天北京的天气怎么样？",
    "Write a short note about the garage door.",
)


PARITY_TOKENS = 24


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """What `model export` produces."""

    quantize: Literal["int8", "none"] = "int8"
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)
    keep_fp32: bool = False
    threads: int = 2
    parity_prompts: Sequence[str] = PARITY_PROMPTS
    parity_tokens: int = PARITY_TOKENS
    name: str | None = None
    source_label: str | None = None
    # Rewrite the graph for CPU inference (see optimize.py) before quantizing it.
    optimize: bool = True


def export_model(
    source: str | Path, out: Path, options: ExportOptions, progress: Progress | None = None
) -> Manifest:
    """Export ``source`` (a directory or hub id) to ``out`` and return the manifest written."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    steps = (6 if options.quantize == "int8" else 4) + (1 if options.optimize else 0)
    progress = progress or Progress(steps)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: output directory is not empty")
    out.mkdir(parents=True, exist_ok=True)
    with progress.step(f"reading {source}"):
        config = AutoConfig.from_pretrained(str(source))
        model_type = getattr(config, "model_type", "?")
        if model_type not in SUPPORTED_TYPES:
            raise ExportError(
                f"{source}: model_type {model_type!r} is not a GLM ({', '.join(SUPPORTED_TYPES)})"
            )
        source_dir = Path(str(source))
        if not (source_dir / "tokenizer.json").is_file():
            raise ExportError(f"{source}: tokenizer.json missing (the runtime needs it)")
    with tempfile.TemporaryDirectory(prefix="edge-export-") as tmp:
        fp32_dir = Path(tmp) / "fp32"
        with progress.step("exporting the ONNX graph (optimum, text-generation-with-past)"):
            _optimum_export(str(source), fp32_dir, config)
            for name in TOKENIZER_FILES:
                if (source_dir / name).is_file():
                    shutil.copyfile(source_dir / name, fp32_dir / name)
            tokenizer = ChatTokenizer.from_directory(fp32_dir)
        torch_model: Any = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
        torch_model.eval()
        prompts = [
            tokenizer.encode_chat([{"role": "user", "content": text}]).ids
            for text in options.parity_prompts
        ]
        fp32_graph = fp32_dir / "model.onnx"
        fp32 = _decoder(fp32_graph, options.threads, config)
        parity: list[Parity] = []
        with progress.step("checking the ONNX graph against PyTorch"):
            reference = [_torch_greedy(torch_model, p, options.parity_tokens) for p in prompts]
            parity.append(_parity("pytorch", "model.onnx", fp32, prompts, reference))
            progress.note(_describe(parity[-1]))
        optimization: dict[str, Any] = {}
        if options.optimize:
            with progress.step("rewriting the graph for CPU inference (GroupQueryAttention)"):
                original = Path(tmp) / "original"
                original.mkdir()
                for path in fp32_dir.glob("model.onnx*"):
                    shutil.move(str(path), original / path.name)
                with _quiet():
                    report = optimize_graph(
                        original / "model.onnx",
                        fp32_graph,
                        config,
                        large=_graph_bytes(original / "model.onnx") > TWO_GB,
                    )
                unoptimized = fp32
                fp32 = _decoder(fp32_graph, options.threads, config)
                reference = [_greedy(unoptimized, p, options.parity_tokens) for p in prompts]
                parity.append(_parity("onnx-unoptimized", "model.onnx", fp32, prompts, reference))
                progress.note(f"{report.nodes_before} → {report.nodes_after} nodes")
                progress.note(_describe(parity[-1]))
                check_rewrite(parity[-1])
                optimization = describe_rewrite(report)
        quant: Quantization | None = None
        graph_name = "model.onnx"
        if options.quantize == "int8":
            graph_name = "model_int8.onnx"
            q = options.quantization
            with progress.step(f"quantizing to INT8 ({q.scheme})"):
                quant = quantize(fp32_graph, fp32_dir / graph_name, q)
            with progress.step("checking INT8 against FP32"):
                int8 = _decoder(fp32_dir / graph_name, options.threads, config)
                reference = [_greedy(fp32, p, options.parity_tokens) for p in prompts]
                parity.append(_parity("onnx-fp32", graph_name, int8, prompts, reference))
                progress.note(_describe(parity[-1]))
        keep = {graph_name, "config.json", "generation_config.json", *TOKENIZER_FILES}
        if options.keep_fp32:
            keep.add("model.onnx")
        names: list[str] = []
        for path in sorted(fp32_dir.iterdir()):
            # External-data files belong to the graph they were written with.
            owner = path.name.removesuffix("_data").removesuffix(".data")
            if path.name in keep or owner in keep:
                shutil.move(str(path), out / path.name)
                names.append(path.name)
    with progress.step("writing manifest.json"):
        manifest = Manifest(
            name=options.name or out.name,
            graph=graph_name,
            source=Source(
                model=options.source_label or str(source),
                architecture=str((getattr(config, "architectures", None) or ["?"])[0]),
                model_type=model_type,
            ),
            quantization=quant,
            files=describe_files(out, names),
            parity=parity,
            tools=_versions(),
            options={"optimization": optimization} if optimization else {},
        )
        manifest.write(out)
    return manifest


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence tracer and quantizer chatter that says nothing actionable to the user."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _optimum_export(source: str, out: Path, config: Any) -> None:
    from optimum.exporters.onnx import main_export

    kwargs: dict[str, Any] = {}
    if config.model_type == "glm4":
        # optimum registers `glm` only; GLM-4-0414 has the same graph inputs and outputs.
        from optimum.exporters.onnx.model_configs import GLMOnnxConfig

        kwargs["custom_onnx_configs"] = {
            "model": GLMOnnxConfig(
                config, task="text-generation", use_past=True, use_past_in_inputs=True
            )
        }
    try:
        with _quiet():
            main_export(
                source,
                output=out,
                task="text-generation-with-past",
                do_validation=False,
                **kwargs,
            )
    except Exception as exc:
        raise ExportError(f"optimum export of {source} failed: {exc}") from exc
    if not (out / "model.onnx").is_file():
        raise ExportError(f"optimum export of {source} wrote no model.onnx")


def quantize(fp32: Path, out: Path, settings: QuantizationSettings) -> Quantization:
    """Write an INT8 copy of ``fp32`` to ``out`` with the scheme of ``settings``."""
    try:
        with _quiet():
            return _quantize(fp32, out, settings, large=_graph_bytes(fp32) > TWO_GB)
    except Exception as exc:
        raise ExportError(f"quantizing {fp32.name} ({settings.scheme}) failed: {exc}") from exc


def _quantize(
    fp32: Path, out: Path, settings: QuantizationSettings, *, large: bool
) -> Quantization:
    import onnx

    if settings.scheme == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            fp32,
            out,
            weight_type=QuantType.QUInt8 if settings.weight_type == "uint8" else QuantType.QInt8,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            use_external_data_format=large,
            # Required once attention is fused into GroupQueryAttention; harmless before.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return Quantization(
            scheme="dynamic",
            weight_type=settings.weight_type,
            reduce_range=settings.reduce_range,
            per_channel=settings.per_channel,
        )
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(fp32)),
        bits=8,
        block_size=settings.block_size,
        is_symmetric=True,
        # Level 4 selects the int8 compute kernels; without it MatMulNBits is far slower.
        accuracy_level=settings.accuracy_level,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=large)
    return Quantization(
        scheme="matmul_nbits",
        weight_type="int8",
        block_size=settings.block_size,
        accuracy_level=settings.accuracy_level,
    )


def _graph_bytes(graph: Path) -> int:
    return sum(p.stat().st_size for p in graph.parent.iterdir() if p.name.startswith(graph.name))


def _decoder(graph: Path, threads: int, config: Any) -> Decoder:
    session = open_session(graph, session_options(threads))
    layout = GraphLayout.of(session, graph)
    # One row: parity runs one sequence at a time.
    return make_decoder(
        session, layout, config.max_position_embeddings, vocab_size=config.vocab_size, max_batch=1
    )


def _greedy(decoder: Decoder, prompt: Sequence[int], count: int) -> list[int]:
    """``count`` argmax tokens, never stopping early, so every prompt yields as many positions."""
    state = decoder.start()
    tokens: list[int] = []
    feed: Sequence[int] = prompt
    try:
        for _ in range(count):
            token = int(decoder.forward(state, feed).argmax())
            tokens.append(token)
            feed = (token,)
    finally:
        decoder.release(state)
    return tokens


def _teacher_forced(decoder: Decoder, prompt: Sequence[int], tokens: Sequence[int]) -> list[int]:
    """The decoder's argmax at each position of ``tokens``, fed the reference tokens."""
    state = decoder.start()
    try:
        picks = [int(decoder.forward(state, prompt).argmax())]
        for token in tokens[:-1]:
            picks.append(int(decoder.forward(state, (token,)).argmax()))
    finally:
        decoder.release(state)
    return picks


def _torch_greedy(model: Any, prompt: Sequence[int], count: int) -> list[int]:
    """PyTorch's argmax continuation, with its own KV cache and no stop or min-length rules."""
    import torch

    tokens: list[int] = []
    past = None
    feed = torch.tensor([list(prompt)], dtype=torch.long)
    with torch.no_grad():
        for _ in range(count):
            out = model(input_ids=feed, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            feed = torch.tensor([[token]], dtype=torch.long)
    return tokens


def _parity(
    reference: str,
    graph: str,
    decoder: Decoder,
    prompts: Sequence[Sequence[int]],
    expected: Sequence[Sequence[int]],
) -> Parity:
    agree = total = same = 0
    for prompt, tokens in zip(prompts, expected, strict=True):
        picks = _teacher_forced(decoder, prompt, tokens)
        agree += sum(a == b for a, b in zip(picks, tokens, strict=True))
        total += len(tokens)
        same += _greedy(decoder, prompt, len(tokens)) == list(tokens)
    return Parity(
        reference=reference,
        graph=graph,
        prompts=len(prompts),
        tokens=total,
        top1_agreement=round(agree / total, 4),
        greedy_match=round(same / len(prompts), 4),
    )


def optimize_directory(
    directory: Path, *, threads: int = 2, progress: Progress | None = None
) -> Manifest | None:
    """Rewrite the served graph of an exported model directory in place; None if it already is.

    A graph of an older rewrite is upgraded to the current one. The new graph must give the
    greedy output of the one it replaces (checked on the parity prompts, recorded in the
    manifest); until then the directory is left untouched.
    """
    import json
    import os
    from types import SimpleNamespace

    import onnx

    from edge_runtime.model.manifest import read_manifest, verify_files
    from edge_runtime.model.optimize import rewrite_version

    progress = progress or Progress(3)
    manifest = read_manifest(directory)
    verify_files(directory, manifest, "size")
    graph = directory / manifest.graph
    version = rewrite_version(onnx.load(str(graph), load_external_data=False))
    if version == REWRITE_VERSION:
        return None
    config = SimpleNamespace(**json.loads((directory / "config.json").read_text("utf-8")))
    tokenizer = ChatTokenizer.from_directory(directory)
    prompts = [
        tokenizer.encode_chat([{"role": "user", "content": text}]).ids for text in PARITY_PROMPTS
    ]
    large = _graph_bytes(graph) > TWO_GB
    with tempfile.TemporaryDirectory(prefix="edge-optimize-", dir=directory) as tmp:
        new = Path(tmp) / manifest.graph
        doing = (
            f"upgrading {manifest.graph} from rewrite {version} to {REWRITE_VERSION}"
            if version
            else f"rewriting {manifest.graph} (GroupQueryAttention)"
        )
        with progress.step(doing), _quiet():
            report = optimize_graph(graph, new, config, large=large)
            progress.note(f"{report.nodes_before} → {report.nodes_after} nodes")
        with progress.step("checking the rewritten graph against the original"):
            old = _decoder(graph, threads, config)
            reference = [_greedy(old, p, PARITY_TOKENS) for p in prompts]
            parity = _parity(
                f"onnx-rewrite-{version}" if version else "onnx-unoptimized",
                manifest.graph,
                _decoder(new, threads, config),
                prompts,
                reference,
            )
            progress.note(_describe(parity))
            check_rewrite(parity)
        with progress.step("replacing the graph and updating manifest.json"):
            names = [p.name for p in Path(tmp).iterdir()]
            for stale in directory.glob(f"{manifest.graph}*"):
                if stale.is_file() and stale.name not in names:
                    stale.unlink()
            for name in names:
                os.replace(Path(tmp) / name, directory / name)
            files = {n: e for n, e in manifest.files.items() if (directory / n).is_file()}
            files.update(describe_files(directory, names))
            updated = manifest.model_copy(
                update={
                    "files": files,
                    "parity": [*manifest.parity, parity],
                    "options": {
                        **manifest.options,
                        "optimization": describe_rewrite(
                            report, manifest.options.get("optimization") if version else None
                        ),
                    },
                }
            )
            updated.write(directory)
    return updated


def check_rewrite(parity: Parity) -> None:
    """Refuse a rewritten graph that does not compute what the original did."""
    # Exact arithmetic is not promised (fused kernels sum in another order), so an argmax tie
    # may flip; anything beyond that is a broken rewrite.
    if parity.top1_agreement < 0.99:
        raise ExportError(
            f"the rewritten graph disagrees with the original: {_describe(parity)}; "
            "export with --no-optimize and report the model"
        )


def describe_rewrite(
    report: RewriteReport, upgraded: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest's record of the graph rewrite; ``upgraded`` is the older one's record."""
    if upgraded is not None:
        # An upgrade changes the head only: the older record's node counts still describe
        # the rewrite from optimum's graph.
        return {**upgraded, "rewrite": REWRITE_VERSION, "logits": LOGITS_LAST_PER_ROW}
    return {
        "rewrite": REWRITE_VERSION,
        "attention": "GroupQueryAttention",
        "kv_cache": KV_CACHE_SHARED,
        "logits": LOGITS_LAST_PER_ROW,
        "fused_norms": report.fused_norms,
        "nodes": {"before": report.nodes_before, "after": report.nodes_after},
    }


def _describe(parity: Parity) -> str:
    return (
        f"{parity.graph} vs {parity.reference}: top-1 agreement {parity.top1_agreement:.1%}, "
        f"identical greedy output for {parity.greedy_match:.0%} of {parity.prompts} prompts"
    )


def _versions() -> dict[str, str]:
    found = {}
    for package in ("optimum", "optimum-onnx", "transformers", "torch", "onnx", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
