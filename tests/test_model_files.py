"""Loading model directories: hashes, missing files, wrong graphs, `model verify`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge_runtime.cli import main
from edge_runtime.errors import ModelFileError, ModelFormatError
from edge_runtime.model.manifest import Manifest, describe_files, read_manifest
from edge_runtime.model.runtime import load_model


@pytest.fixture
def model_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_dir, target)
    return target


def test_committed_model_loads_and_is_small(tiny_dir: Path) -> None:
    manifest = read_manifest(tiny_dir)
    assert manifest.graph == "model_int8.onnx"
    assert manifest.quantization is not None
    assert sum(p.stat().st_size for p in tiny_dir.iterdir()) < 25 * 1024 * 1024
    assert not (tiny_dir / "model.onnx").exists()
    with load_model(tiny_dir, threads=1) as model:
        assert model.decoder.layout.layers == 4


def test_the_default_model_ships_int8_only_with_its_card() -> None:
    # The default config's model: trained (not random), INT8, under 25 MB, every file as its
    # manifest says, and a model card that gives its figures.
    shipped = Path(__file__).resolve().parents[1] / "models" / "glm-edge-mini"
    manifest = read_manifest(shipped)
    assert manifest.graph == "model_int8.onnx" and manifest.quantization is not None
    assert "model train" in manifest.source.model
    assert sum(p.stat().st_size for p in shipped.iterdir()) < 25 * 1024 * 1024
    assert not (shipped / "model.onnx").exists()
    assert main(["model", "verify", str(shipped)]) == 0
    card = (shipped / "README.md").read_text()
    for heading in ("## Training data", "## Training", "## Evaluation", "## Limits"):
        assert heading in card, heading


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", "model_int8.onnx"])
def test_missing_file_is_named(model_copy: Path, name: str) -> None:
    (model_copy / name).unlink()
    with pytest.raises(ModelFileError, match=f"{name}: missing"):
        load_model(model_copy, threads=1)


def test_changed_byte_fails_the_hash(model_copy: Path) -> None:
    path = model_copy / "model_int8.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="model_int8.onnx: sha256 does not match"):
        load_model(model_copy, threads=1)
    # "size" mode only checks sizes, so the same corruption goes unnoticed there.
    load_model(model_copy, threads=1, verify="size").close()


def test_truncated_file_fails_the_size(model_copy: Path) -> None:
    path = model_copy / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match="tokenizer.json: size"):
        load_model(model_copy, threads=1, verify="size")


def test_missing_manifest(model_copy: Path) -> None:
    (model_copy / "manifest.json").unlink()
    with pytest.raises(ModelFileError, match="manifest.json: missing"):
        load_model(model_copy, threads=1)
    with load_model(model_copy, threads=1, verify="off") as model:
        assert model.graph.name == "model_int8.onnx"


def test_malformed_manifest(model_copy: Path) -> None:
    (model_copy / "manifest.json").write_text('{"format": 1, "name": 3}')
    with pytest.raises(ModelFileError, match="manifest.json: invalid"):
        load_model(model_copy, threads=1)


def test_garbage_graph_is_named(model_copy: Path) -> None:
    (model_copy / "model_int8.onnx").write_bytes(b"not a protobuf" * 100)
    with pytest.raises(ModelFileError, match="model_int8.onnx: onnxruntime cannot load it"):
        load_model(model_copy, threads=1, verify="off")


def _rewrite_manifest(directory: Path) -> None:
    old = read_manifest(directory)
    names = [p.name for p in directory.iterdir() if p.name != "manifest.json"]
    Manifest(
        name=old.name, graph=old.graph, source=old.source, files=describe_files(directory, names)
    ).write(directory)


def test_graph_without_kv_cache_inputs(model_copy: Path) -> None:
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    logits = helper.make_tensor_value_info("logits", TensorProto.INT64, ["b", "s"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["logits"])], "g", [ids], [logits]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, model_copy / "model_int8.onnx")
    _rewrite_manifest(model_copy)
    with pytest.raises(ModelFormatError, match="attention_mask.*past_key_values"):
        load_model(model_copy, threads=1)


def test_tokenizer_without_chat_template(model_copy: Path) -> None:
    path = model_copy / "tokenizer_config.json"
    config = json.loads(path.read_text())
    del config["chat_template"]
    path.write_text(json.dumps(config))
    _rewrite_manifest(model_copy)
    with pytest.raises(ModelFormatError, match="no chat_template"):
        load_model(model_copy, threads=1)


def test_no_such_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such model directory"):
        load_model(tmp_path / "nope", threads=1)


def test_verify_command(
    tiny_dir: Path, model_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "verify", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "files match manifest.json" in out
    assert "parity model_int8.onnx vs onnx-fp32" in out
    (model_copy / "config.json").write_text("{}")
    assert main(["model", "verify", str(model_copy)]) == 1
    assert "config.json" in capsys.readouterr().out


def test_decoder_rejects_foreign_state(tiny_dir: Path) -> None:
    with load_model(tiny_dir, threads=1) as model, pytest.raises(TypeError):
        model.decoder.forward(object(), [1])  # type: ignore[arg-type]
    assert np.__name__  # numpy stays importable alongside onnx in one process


def test_tokenizer_larger_than_the_model(model_copy: Path) -> None:
    path = model_copy / "config.json"
    config = json.loads(path.read_text())
    config["vocab_size"] = 100
    path.write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="do not belong together"):
        load_model(model_copy, threads=1, verify="off")


@pytest.mark.parametrize("name", ["../outside.json", "/etc/hostname", "sub/dir.json"])
def test_manifest_cannot_name_files_outside_the_directory(model_copy: Path, name: str) -> None:
    path = model_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "size": 1}
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="not a plain name"):
        load_model(model_copy, threads=1)


def test_manifest_must_list_every_file(model_copy: Path) -> None:
    path = model_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["files"]["tokenizer.json"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="does not list tokenizer.json"):
        load_model(model_copy, threads=1)


@pytest.mark.parametrize("eos", ["abc", {}, 1.5, True, [1, "x"]])
def test_odd_eos_token_id_names_the_file(model_copy: Path, eos: object) -> None:
    path = model_copy / "generation_config.json"
    config = json.loads(path.read_text())
    config["eos_token_id"] = eos
    path.write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="generation_config.json: eos_token_id"):
        load_model(model_copy, threads=1, verify="off")


def test_bad_sampling_default_fails_the_load(model_copy: Path) -> None:
    path = model_copy / "generation_config.json"
    config = json.loads(path.read_text())
    config["temperature"] = "hot"
    path.write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="generation_config.json: bad sampling default"):
        load_model(model_copy, threads=1, verify="off")


def test_chat_template_in_its_own_file(model_copy: Path) -> None:
    path = model_copy / "tokenizer_config.json"
    config = json.loads(path.read_text())
    (model_copy / "chat_template.jinja").write_text(config.pop("chat_template"))
    path.write_text(json.dumps(config))
    with load_model(model_copy, threads=1, verify="off") as model:
        text = model.tokenizer.render([{"role": "user", "content": "hi"}])
        assert text == "[gMASK]<sop><|user|>\nhi<|assistant|>"
