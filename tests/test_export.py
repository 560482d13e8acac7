"""The export path: optimum ONNX export, INT8, parity with PyTorch and optimum, the manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

from edge_runtime.config import QuantizationSettings
from edge_runtime.errors import ExportError
from edge_runtime.model.batch import BatchDecoder
from edge_runtime.model.export import (
    PARITY_PROMPTS,
    ExportOptions,
    _decoder,
    _greedy,
    _parity,
    export_model,
)
from edge_runtime.model.generate import Generation, GenerationParams
from edge_runtime.model.manifest import read_manifest
from edge_runtime.model.runtime import Model, load_model
from edge_runtime.model.tiny import TinyShape, build_tiny, make_checkpoint

PROMPTS = ("What is the humidity in the garage?", "明天上海的天气怎么样？", "Turn off the fan.")
NEW_TOKENS = 20
SMALL = TinyShape(
    hidden_size=128, intermediate_size=344, layers=2, heads=4, kv_heads=2, head_dim=32
)


@dataclass
class Export:
    checkpoint: Path
    out: Path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Export:
    root = tmp_path_factory.mktemp("export")
    checkpoint = make_checkpoint(root / "hf", seed=1)
    export_model(checkpoint, root / "onnx", ExportOptions(keep_fp32=True, parity_tokens=16))
    return Export(checkpoint, root / "onnx")


def _our_greedy(model: Model, prompt: list[int]) -> list[int]:
    generation = Generation(
        model.decoder,
        model.tokenizer.stream_decoder(),
        prompt,
        GenerationParams(max_new_tokens=NEW_TOKENS),
        eos_token_ids=[],
        context_length=model.context_length,
    )
    return list(generation.run().token_ids)


def _greedy_reference(model: object) -> None:
    """Make a transformers/optimum model decode greedily for exactly NEW_TOKENS tokens.

    transformers merges the checkpoint's generation_config.json (do_sample=True) into any
    config passed to generate(), so the model's own default is replaced instead.
    """
    model.generation_config = GenerationConfig(  # type: ignore[attr-defined]
        do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0
    )


@pytest.fixture(scope="module")
def fp32(exported: Export) -> Iterator[Model]:
    # The manifest serves the INT8 graph; a copy without model_int8.onnx serves the FP32 one.
    fp32_dir = exported.out.parent / "fp32-only"
    fp32_dir.mkdir()
    for path in exported.out.iterdir():
        if path.name not in ("model_int8.onnx", "manifest.json"):
            (fp32_dir / path.name).symlink_to(path)
    with load_model(fp32_dir, threads=1, verify="off") as model:
        assert model.graph.name == "model.onnx"
        yield model


@pytest.fixture(scope="module")
def int8(exported: Export) -> Iterator[Model]:
    with load_model(exported.out, threads=1) as model:
        yield model


def _prompts(model: Model) -> list[list[int]]:
    return [model.tokenizer.encode_chat([{"role": "user", "content": p}]).ids for p in PROMPTS]


def test_onnx_export_matches_pytorch_greedy(exported: Export, fp32: Model) -> None:
    torch_model = AutoModelForCausalLM.from_pretrained(exported.checkpoint).eval()
    _greedy_reference(torch_model)
    for prompt in _prompts(fp32):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = torch_model.generate(ids, attention_mask=torch.ones_like(ids))
        assert _our_greedy(fp32, prompt) == out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("graph", ["model.onnx", "model_int8.onnx"])
def test_our_loop_matches_optimum(exported: Export, fp32: Model, int8: Model, graph: str) -> None:
    from optimum.onnxruntime import ORTModelForCausalLM

    ours = fp32 if graph == "model.onnx" else int8
    reference = ORTModelForCausalLM.from_pretrained(
        exported.out, file_name=graph, use_cache=True, use_io_binding=False
    )
    _greedy_reference(reference)
    for prompt in _prompts(ours):
        ids = torch.tensor([prompt])
        out = reference.generate(ids, attention_mask=torch.ones_like(ids))
        assert _our_greedy(ours, prompt) == out[0, len(prompt) :].tolist()


def test_manifest_records_parity(exported: Export) -> None:
    manifest = read_manifest(exported.out)
    by_reference = {p.reference: p for p in manifest.parity}
    torch_parity, int8_parity = by_reference["pytorch"], by_reference["onnx-fp32"]
    assert torch_parity.graph == "model.onnx"
    assert torch_parity.top1_agreement == 1.0
    assert torch_parity.greedy_match == 1.0
    assert int8_parity.graph == "model_int8.onnx"
    assert int8_parity.prompts == len(PARITY_PROMPTS)
    assert int8_parity.tokens == len(PARITY_PROMPTS) * 16
    assert 0.5 < int8_parity.top1_agreement <= 1.0
    # The recorded figure is the one a fresh measurement gives.
    config = AutoModelForCausalLM.from_pretrained(exported.checkpoint).config
    reference = _decoder(exported.out / "model.onnx", 1, config)
    quantized = _decoder(exported.out / "model_int8.onnx", 1, config)
    tok = load_model(exported.out, threads=1).tokenizer
    prompts = [tok.encode_chat([{"role": "user", "content": p}]).ids for p in PARITY_PROMPTS]
    expected = [_greedy(reference, p, 16) for p in prompts]
    assert _parity("onnx-fp32", "model_int8.onnx", quantized, prompts, expected) == int8_parity


def test_manifest_hashes_what_was_written(exported: Export) -> None:
    manifest = read_manifest(exported.out)
    assert set(manifest.files) >= {
        "model_int8.onnx",
        "model.onnx",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    for name, entry in manifest.files.items():
        assert hashlib.sha256((exported.out / name).read_bytes()).hexdigest() == entry.sha256


def test_int8_weights_are_a_fraction_of_fp32(exported: Export) -> None:
    fp32_size = (exported.out / "model.onnx").stat().st_size
    int8_size = (exported.out / "model_int8.onnx").stat().st_size
    assert int8_size / fp32_size < 0.3


def test_glm4_exports_through_the_glm_config(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "hf", seed=2, shape=SMALL, model_type="glm4")
    manifest = export_model(
        checkpoint, tmp_path / "onnx", ExportOptions(quantize="none", parity_tokens=12)
    )
    assert manifest.source.model_type == "glm4"
    assert manifest.quantization is None
    # Exported, then rewritten: each graph gives the greedy output of the one before it.
    assert [(p.reference, p.greedy_match, p.top1_agreement) for p in manifest.parity] == [
        ("pytorch", 1.0, 1.0),
        ("onnx-unoptimized", 1.0, 1.0),
    ]
    with load_model(tmp_path / "onnx", threads=1) as model:
        assert model.graph.name == "model.onnx"
        assert isinstance(model.decoder, BatchDecoder)
        assert model.generate([1, 2, 3], GenerationParams(max_new_tokens=4)).run()


def test_matmul_nbits_export(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "hf", seed=3, shape=SMALL)
    options = ExportOptions(
        quantization=QuantizationSettings(scheme="matmul_nbits"), parity_tokens=8
    )
    manifest = export_model(checkpoint, tmp_path / "onnx", options)
    assert manifest.quantization is not None
    assert manifest.quantization.scheme == "matmul_nbits"
    assert manifest.quantization.accuracy_level == 4
    graph = onnx.load(str(tmp_path / "onnx" / "model_int8.onnx"))
    nbits = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
    assert nbits
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert (attrs["bits"], attrs["accuracy_level"]) == (8, 4)
    with load_model(tmp_path / "onnx", threads=1) as model:
        assert model.generate([1, 2, 3], GenerationParams(max_new_tokens=4)).run()


def test_export_refuses_other_architectures(tmp_path: Path) -> None:
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    with pytest.raises(ExportError, match="'llama' is not a GLM"):
        export_model(tmp_path / "llama", tmp_path / "out", ExportOptions())


def test_export_refuses_a_non_empty_output(exported: Export) -> None:
    with pytest.raises(ExportError, match="not empty"):
        export_model(exported.checkpoint, exported.out, ExportOptions())


def test_build_tiny_is_reproducible(tmp_path: Path) -> None:
    options = ExportOptions(parity_tokens=4)
    first = build_tiny(tmp_path / "a", seed=5, shape=SMALL, options=options)
    second = build_tiny(tmp_path / "b", seed=5, shape=SMALL, options=options)
    assert first.files == second.files


def test_unsigned_weights_with_reduced_range(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "hf", seed=4, shape=SMALL)
    quantization = QuantizationSettings(weight_type="uint8", reduce_range=True)
    manifest = export_model(
        checkpoint, tmp_path / "onnx", ExportOptions(quantization=quantization, parity_tokens=4)
    )
    assert manifest.quantization is not None
    assert (manifest.quantization.weight_type, manifest.quantization.reduce_range) == (
        "uint8",
        True,
    )
    graph = onnx.load(str(tmp_path / "onnx" / "model_int8.onnx")).graph
    matmul_weights = {n.input[1] for n in graph.node if n.op_type == "MatMulInteger"}
    weights = [t for t in graph.initializer if t.name in matmul_weights]
    assert weights
    assert {t.data_type for t in weights} == {onnx.TensorProto.UINT8}
    # reduce_range keeps MatMul weights in 7 bits: never the full byte's range.
    for tensor in weights:
        values = onnx.numpy_helper.to_array(tensor)
        assert int(values.max()) - int(values.min()) <= 127
