"""The graph rewrite (GroupQueryAttention, in-place cache), `model optimize`, batched decoding."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import onnx
import pytest

from edge_runtime.cli import main
from edge_runtime.errors import ContextLengthError, ExportError
from edge_runtime.model.batch import BatchDecoder
from edge_runtime.model.export import ExportOptions, export_model
from edge_runtime.model.generate import Generation, GenerationParams
from edge_runtime.model.manifest import describe_files, read_manifest, verify_files
from edge_runtime.model.optimize import AttentionShape, is_optimized, rewrite
from edge_runtime.model.runtime import Model, OnnxDecoder, load_model
from edge_runtime.model.tiny import TinyShape, make_checkpoint
from edge_runtime.model.verify import verify_directory

SMALL = TinyShape(
    hidden_size=128, intermediate_size=344, layers=2, heads=4, kv_heads=2, head_dim=32
)
PROMPTS = (
    "What is the humidity in the garage?",
    "明天上海的天气怎么样？",
    "Turn off the fan.",
    "Remind me to water the plants at seven and tell me the weather in Oslo tomorrow.",
    "打开客厅的灯",
    "Is the front door locked?",
)
NEW_TOKENS = 24


def _export(
    root: Path, model_type: str, *, optimize: bool, quantize: Literal["int8", "none"] = "none"
) -> Path:
    checkpoint = root / f"hf-{model_type}"
    if not checkpoint.exists():
        make_checkpoint(checkpoint, seed=7, shape=SMALL, model_type=model_type)
    out = root / f"{model_type}-{quantize}-{'optimized' if optimize else 'plain'}"
    options = ExportOptions(quantize=quantize, optimize=optimize, parity_tokens=8)
    export_model(checkpoint, out, options)
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("optimize")
    return {
        f"{kind}-{state}": _export(root, kind, optimize=state == "optimized")
        for kind in ("glm", "glm4")
        for state in ("plain", "optimized")
    }


@pytest.fixture(scope="module")
def optimized(exports: dict[str, Path]) -> Iterator[Model]:
    with load_model(exports["glm-optimized"], threads=1, max_batch=4) as model:
        yield model


def _prompt(model: Model, text: str) -> list[int]:
    return model.tokenizer.encode_chat([{"role": "user", "content": text}]).ids


def _generation(model: Model, prompt: list[int]) -> Generation:
    return Generation(
        model.decoder,
        model.tokenizer.stream_decoder(),
        prompt,
        GenerationParams(max_new_tokens=NEW_TOKENS),
        eos_token_ids=[],  # every prompt runs the full length
        context_length=model.context_length,
    )


def _greedy(model: Model, prompt: list[int]) -> tuple[int, ...]:
    return _generation(model, prompt).run().token_ids


@pytest.mark.parametrize("model_type", ["glm", "glm4"])
def test_rewritten_graph_keeps_greedy_output(exports: dict[str, Path], model_type: str) -> None:
    plain_dir, new_dir = exports[f"{model_type}-plain"], exports[f"{model_type}-optimized"]
    with (
        load_model(plain_dir, threads=1) as plain,
        load_model(new_dir, threads=1) as new,
    ):
        assert isinstance(plain.decoder, OnnxDecoder)
        assert isinstance(new.decoder, BatchDecoder)
        for text in PROMPTS:
            assert _greedy(new, _prompt(new, text)) == _greedy(plain, _prompt(plain, text))


def test_as_many_kv_heads_as_query_heads(tmp_path: Path) -> None:
    # The three projections are then equally wide: only where they flow tells them apart.
    shape = TinyShape(hidden_size=128, intermediate_size=344, layers=2, heads=4, kv_heads=4)
    checkpoint = make_checkpoint(tmp_path / "hf", seed=8, shape=shape)
    options = ExportOptions(quantize="none", parity_tokens=12)
    manifest = export_model(checkpoint, tmp_path / "onnx", options)
    assert [(p.reference, p.top1_agreement) for p in manifest.parity] == [
        ("pytorch", 1.0),
        ("onnx-unoptimized", 1.0),
    ]
    assert manifest.options["optimization"]["attention"] == "GroupQueryAttention"


def test_rewritten_graph_has_fused_attention(exports: dict[str, Path]) -> None:
    directory = exports["glm-optimized"]
    graph = onnx.load(str(directory / "model.onnx"))
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("GroupQueryAttention") == SMALL.layers
    assert ops.count("SkipSimplifiedLayerNormalization") >= SMALL.layers
    assert "Softmax" not in ops and "position_ids" not in {i.name for i in graph.graph.input}
    # Per layer: one packed q/k/v projection, the output projection, gate/up (halved by one
    # static Split) and down; then the head, on each row's last position. The only Shapes
    # left measure the mask and the new tokens.
    assert ops.count("MatMul") == 4 * SMALL.layers + 1
    assert ops.count("Split") == SMALL.layers and ops.count("Shape") == 2
    assert ops.count("GatherND") == 1 and "Slice" not in ops
    assert is_optimized(graph)
    options = read_manifest(directory).options["optimization"]
    assert options["attention"] == "GroupQueryAttention"
    assert options["kv_cache"] == "shared_buffer"
    assert (options["rewrite"], options["logits"]) == ("2", "last_position_per_row")
    assert options["nodes"]["after"] * 5 < options["nodes"]["before"]
    # Unoptimized export: no rewrite recorded, and the graph says so.
    plain = exports["glm-plain"]
    assert "optimization" not in read_manifest(plain).options
    assert not is_optimized(onnx.load(str(plain / "model.onnx")))
    # model verify tells the two apart.
    for path, says in (
        (directory, "ok   rewritten: GroupQueryAttention"),
        (plain, "not rewritten"),
    ):
        out = io.StringIO()
        assert verify_directory(path, out) == 0
        assert says in out.getvalue()


def test_model_optimize_rewrites_an_int8_export_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _export(tmp_path, "glm", optimize=False, quantize="int8")
    before = shutil.copytree(directory, tmp_path / "before")
    assert main(["model", "optimize", str(directory)]) == 0
    assert "rewritten (rewrite 2); greedy output unchanged" in capsys.readouterr().out
    manifest = read_manifest(directory)
    verify_files(directory, manifest, "full")
    last = manifest.parity[-1]
    assert (last.reference, last.graph, last.greedy_match) == (
        "onnx-unoptimized",
        "model_int8.onnx",
        1.0,
    )
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in before.iterdir())
    with load_model(directory, threads=1) as new, load_model(before, threads=1) as old:
        assert isinstance(new.decoder, BatchDecoder)
        for text in PROMPTS[:3]:
            assert _greedy(new, _prompt(new, text)) == _greedy(old, _prompt(old, text))
    assert main(["model", "optimize", str(directory)]) == 0
    assert "already optimized" in capsys.readouterr().out


def test_model_optimize_leaves_a_directory_it_cannot_rewrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _export(tmp_path, "glm", optimize=False)
    config = json.loads((directory / "config.json").read_text())
    # A config that does not describe the graph: no layer has projections of these widths.
    config["num_attention_heads"] = 2
    (directory / "config.json").write_text(json.dumps(config))
    manifest = read_manifest(directory)
    files = {**manifest.files, **describe_files(directory, ["config.json"])}
    manifest.model_copy(update={"files": files}).write(directory)
    graph = (directory / "model.onnx").read_bytes()
    assert main(["model", "optimize", str(directory)]) == 1
    assert "found attention in layers []" in capsys.readouterr().err
    assert (directory / "model.onnx").read_bytes() == graph
    assert [p.name for p in directory.iterdir() if p.name.startswith("edge-optimize")] == []


def test_attention_shape_refuses_what_the_kernel_cannot_do() -> None:
    base = {
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_size": 128,
        "partial_rotary_factor": 0.5,
        "max_position_embeddings": 64,
    }
    shape = AttentionShape.of(SimpleNamespace(**base))
    assert (shape.rotary_dim, shape.kv_heads) == (16, 2)
    cos, sin = shape.rotary_caches()
    assert cos.shape == sin.shape == (64, 8)
    assert cos[0].tolist() == [1.0] * 8
    with pytest.raises(ExportError, match="multiple of 16"):
        AttentionShape.of(SimpleNamespace(**{**base, "head_dim": 24}))
    with pytest.raises(ExportError, match="rope_scaling"):
        AttentionShape.of(SimpleNamespace(**base, rope_scaling={"rope_type": "yarn"}))


def test_rewrite_refuses_a_rewritten_graph(exports: dict[str, Path]) -> None:
    graph = onnx.load(str(exports["glm-optimized"] / "model.onnx"))
    config = json.loads((exports["glm-optimized"] / "config.json").read_text())
    with pytest.raises(ExportError, match="already rewritten"):
        rewrite(graph, AttentionShape.of(SimpleNamespace(**config)))


def _concurrently(model: Model, prompts: list[list[int]]) -> list[tuple[int, ...]]:
    results: list[tuple[int, ...]] = [() for _ in prompts]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = _greedy(model, prompts[index])
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    return results


def test_concurrent_sequences_decode_as_they_would_alone(optimized: Model) -> None:
    prompts = [_prompt(optimized, text) for text in PROMPTS[:4]]
    alone = [_greedy(optimized, prompt) for prompt in prompts]
    assert len(set(alone)) > 1  # different prompts, different answers: rows cannot be mixed up
    assert _concurrently(optimized, prompts) == alone
    assert optimized.decoder.free_rows == 4


def test_more_sequences_than_rows_wait_for_a_row(exports: dict[str, Path]) -> None:
    with load_model(exports["glm-optimized"], threads=1, max_batch=2) as model:
        prompts = [_prompt(model, text) for text in PROMPTS]
        alone = [_greedy(model, prompt) for prompt in prompts]
        assert _concurrently(model, prompts) == alone
        assert model.decoder.free_rows == 2


def test_a_sequence_that_stops_early_gives_its_row_back(optimized: Model) -> None:
    generation = _generation(optimized, _prompt(optimized, PROMPTS[0]))
    next(iter(generation))
    assert optimized.decoder.free_rows == 3
    generation.cancel_token.cancel()
    generation.run()
    assert generation.result.finish_reason == "cancelled"
    assert optimized.decoder.free_rows == 4


def test_the_cache_bounds_a_sequence(exports: dict[str, Path]) -> None:
    with load_model(exports["glm-optimized"], threads=1, context_length=32) as model:
        decoder = model.decoder
        assert isinstance(decoder, BatchDecoder)
        state = decoder.start()
        decoder.forward(state, list(range(3, 30)))
        with pytest.raises(ContextLengthError, match="the cache holds 32"):
            decoder.forward(state, list(range(3, 10)))
        decoder.release(state)


def test_streams_beyond_the_batch_wait_on_the_event_loop(exports: dict[str, Path]) -> None:
    with load_model(exports["glm-optimized"], threads=1, max_batch=2) as model:
        prompts = [_prompt(model, text) for text in PROMPTS]
        alone = [_greedy(model, prompt) for prompt in prompts]

        async def one(prompt: list[int]) -> tuple[int, ...]:
            generation = _generation(model, prompt)
            async for _ in model.stream(generation):
                pass
            return generation.result.token_ids

        async def all_of_them() -> list[tuple[int, ...]]:
            return list(await asyncio.gather(*(one(p) for p in prompts)))

        assert asyncio.run(all_of_them()) == alone


def test_leaving_a_stream_early_cancels_it_and_frees_its_row(optimized: Model) -> None:
    generation = _generation(optimized, _prompt(optimized, PROMPTS[1]))

    async def first_delta_then_leave() -> None:
        async for _ in optimized.stream(generation):
            break
        for _ in range(500):  # the generation's thread stops at its next step
            if optimized.decoder.free_rows == 4:
                return
            await asyncio.sleep(0.01)

    asyncio.run(first_delta_then_leave())
    assert optimized.decoder.free_rows == 4
    assert generation.result.finish_reason == "cancelled"


def _spy_runs(decoder: BatchDecoder) -> list[tuple[int, int]]:
    """Record the (rows, tokens) shape of every run the decoder makes."""
    shapes: list[tuple[int, int]] = []
    run = decoder._run

    def spy(binding: Any, ids: np.ndarray[Any, Any], mask: np.ndarray[Any, Any]) -> None:
        shapes.append(ids.shape)
        run(binding, ids, mask)

    decoder._run = spy  # type: ignore[method-assign]
    return shapes


def _prefill_together(
    model: Model, prompts: list[list[int]]
) -> tuple[list[tuple[int, int]], list[np.ndarray[Any, Any]]]:
    """Prefill ``prompts`` from as many threads into adjacent rows; the runs and the logits."""
    assert isinstance(model.decoder, BatchDecoder)
    # A long gather window: every prompt is waiting before the first run starts.
    decoder = BatchDecoder(
        model.decoder.session,
        model.decoder.layout,
        model.context_length,
        rows=len(prompts),
        vocab_size=model.config.vocab_size,
        gather_s=30.0,
    )
    shapes = _spy_runs(decoder)
    rows = [decoder.start() for _ in prompts]
    logits: list[np.ndarray[Any, Any]] = [np.empty(0) for _ in prompts]

    def prefill(i: int) -> None:
        logits[i] = decoder.forward(rows[i], prompts[i])

    threads = [threading.Thread(target=prefill, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [row.length for row in rows] == [len(p) for p in prompts]
    return shapes, logits


def test_prompts_of_adjacent_rows_are_prefilled_together(optimized: Model) -> None:
    prompts = [_prompt(optimized, text) for text in PROMPTS[:4]]
    assert len({len(p) for p in prompts}) > 1  # right padding is exercised
    shapes, logits = _prefill_together(optimized, prompts)
    assert shapes == [(4, max(len(p) for p in prompts))]
    for prompt, got in zip(prompts, logits, strict=True):
        alone = optimized.decoder.start()
        try:
            np.testing.assert_allclose(got, optimized.decoder.forward(alone, prompt), atol=1e-4)
        finally:
            optimized.decoder.release(alone)
    # And each row decodes from there as it would have alone.
    assert _concurrently(optimized, prompts) == [_greedy(optimized, p) for p in prompts]


def _as_rewrite_1(path: Path) -> None:
    """Turn a graph of the current rewrite back into what rewrite 1 wrote: a Slice to the
    batch's last position before the head instead of each row's own."""
    model = onnx.load(str(path))
    graph = model.graph
    gather = next(n for n in graph.node if n.op_type == "GatherND")
    head_input = next(n for n in graph.node if n.name == "lm_head.last_position").output[0]
    keep = [n for n in graph.node if not any(o.startswith("lm_head.") for o in n.output)]
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name != "lm_head.zero"]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "lm_head.slice_start"),
            onnx.numpy_helper.from_array(np.array([2**62], dtype=np.int64), "lm_head.slice_end"),
        ]
    )
    graph.node.append(
        onnx.helper.make_node(
            "Slice",
            [gather.input[0], "lm_head.slice_start", "lm_head.slice_end", "gqa.axis_1"],
            [head_input],
            name="lm_head.last_position",
        )
    )
    for prop in model.metadata_props:
        if prop.key == "edge_runtime.logits":
            prop.value = "last_position"
        elif prop.key == "edge_runtime.optimized":
            prop.value = "1"
    onnx.save(model, str(path))


def test_model_optimize_upgrades_an_older_rewrite(
    exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = shutil.copytree(exports["glm-optimized"], tmp_path / "old")
    _as_rewrite_1(directory / "model.onnx")
    manifest = read_manifest(directory)
    files = {**manifest.files, **describe_files(directory, ["model.onnx"])}
    manifest.model_copy(update={"files": files}).write(directory)
    assert not is_optimized(onnx.load(str(directory / "model.onnx")))
    said = io.StringIO()
    assert verify_directory(directory, said) == 0
    assert "an older rewrite: `edge-runtime model optimize` upgrades it" in said.getvalue()
    with load_model(directory, threads=1) as old:
        # Rewrite 1 batches only prompts of one length: others are prefilled one by one.
        assert isinstance(old.decoder, BatchDecoder) and not old.decoder.layout.ragged_prefill
        prompts = [_prompt(old, text) for text in ("Turn off the fan.", "Turn on the fan.")]
        prompts.append(_prompt(old, PROMPTS[0]))
        assert len(prompts[0]) == len(prompts[1]) != len(prompts[2])
        shapes, _ = _prefill_together(old, prompts)
        assert shapes == [(2, len(prompts[0])), (1, len(prompts[2]))]
        before = [_greedy(old, _prompt(old, text)) for text in PROMPTS[:3]]

    assert main(["model", "optimize", str(directory)]) == 0
    printed = capsys.readouterr()
    assert "model.onnx rewritten (rewrite 2); greedy output unchanged" in printed.out
    assert "upgrading model.onnx from rewrite 1 to 2" in printed.err
    manifest = read_manifest(directory)
    verify_files(directory, manifest, "full")
    assert (manifest.parity[-1].reference, manifest.parity[-1].greedy_match) == (
        "onnx-rewrite-1",
        1.0,
    )
    assert manifest.options["optimization"]["rewrite"] == "2"
    assert manifest.options["optimization"]["logits"] == "last_position_per_row"
    with load_model(directory, threads=1) as new:
        assert isinstance(new.decoder, BatchDecoder) and new.decoder.layout.ragged_prefill
        assert [_greedy(new, _prompt(new, text)) for text in PROMPTS[:3]] == before
        shapes, _ = _prefill_together(new, prompts)
        assert shapes == [(3, len(prompts[2]))]


def test_new_prompts_do_not_hold_back_a_running_sequence(optimized: Model) -> None:
    # One sequence decodes while a queue of new requests keeps a prompt waiting at every
    # step: prompts go first, but never twice in a row while a sequence waits for a token.
    assert isinstance(optimized.decoder, BatchDecoder)
    decoder = BatchDecoder(
        optimized.decoder.session,
        optimized.decoder.layout,
        optimized.context_length,
        rows=2,
        vocab_size=optimized.config.vocab_size,
    )
    shapes = _spy_runs(decoder)
    prompt = _prompt(optimized, PROMPTS[0])
    running = decoder.start()
    decoder.forward(running, prompt)

    def newcomers() -> None:
        for _ in range(24):
            row = decoder.start()
            decoder.forward(row, _prompt(optimized, PROMPTS[2]))
            decoder.release(row)

    queue = threading.Thread(target=newcomers)
    queue.start()
    for _ in range(16):
        decoder.forward(running, [5])
    queue.join(timeout=60)
    steps = [i for i, (_, tokens) in enumerate(shapes) if tokens == 1]
    during = shapes[steps[0] : steps[-1]]
    in_a_row = 0
    for _, tokens in during:
        in_a_row = in_a_row + 1 if tokens > 1 else 0
        assert in_a_row <= 1, shapes
    assert sum(tokens > 1 for _, tokens in during) >= 1  # prompts did run in between
