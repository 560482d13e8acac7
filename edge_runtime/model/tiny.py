"""glm-tiny: a small seeded-random GLM with a locally trained BPE tokenizer, for tests and defaults.

It goes through the same export and INT8 path as a real checkpoint, so everything downstream of
the model directory is exercised; its answers are noise (the weights are random).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from edge_runtime.model.export import ExportOptions, export_model
from edge_runtime.model.manifest import Manifest
from edge_runtime.model.progress import Progress
from edge_runtime.model.tokenizer import GLM_SPECIAL_TOKENS, GLM_TURN_END_TOKENS


@dataclass(frozen=True, slots=True)
class TinyShape:
    """Architecture of the tiny GLM (GLM-4's shape, scaled down)."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    layers: int = 4
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 32
    max_positions: int = 2048


def corpus_lines() -> list[str]:
    """The text shipped with the package that the tokenizer is trained on."""
    text = resources.files("edge_runtime.model").joinpath("data/corpus.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def chat_template() -> str:
    """GLM-4's chat format as a Jinja template."""
    return resources.files("edge_runtime.model").joinpath("chat_template.jinja").read_text("utf-8")


def train_tokenizer(
    directory: Path,
    vocab_size: int,
    max_length: int = 2048,
    texts: Iterable[str] | None = None,
    *,
    copyable: bool = False,
) -> int:
    """Train a byte-level BPE with GLM-4's special tokens; write tokenizer.json and its config.

    ``texts`` defaults to the packaged corpus. With ``copyable``, whitespace, digits and Han
    characters are pieces of their own, so a name or a number tokenizes the same wherever it
    occurs ("Sanya" after a space in the request and after a quote in a tool call; "23" in an
    observation's JSON and in "23～30°C"): a small model then copies it token for token instead of
    learning a mapping between spellings, and a name it never saw still comes out whole.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if copyable:
        isolate = pre_tokenizers.Split(Regex(r"\s+|\p{Han}|\p{N}"), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([isolate, byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(GLM_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines() if texts is None else texts, trainer=trainer)
    # Like GLM-4's tokenizer.json: encoding with special tokens prepends [gMASK]<sop>.
    gmask, sop = tokenizer.token_to_id("[gMASK]"), tokenizer.token_to_id("<sop>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A",
        pair="[gMASK] <sop> $A $B",
        special_tokens=[("[gMASK]", gmask), ("<sop>", sop)],
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": list(GLM_SPECIAL_TOKENS[1:]),
        "chat_template": chat_template(),
    }
    (directory / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return int(tokenizer.get_vocab_size(with_added_tokens=True))


def make_checkpoint(
    directory: Path,
    *,
    seed: int = 0,
    shape: TinyShape | None = None,
    model_type: str = "glm",
) -> Path:
    """Write a seeded-random GLM checkpoint (weights, configs, tokenizer) into ``directory``."""
    import torch
    from tokenizers import Tokenizer
    from transformers import (
        GenerationConfig,
        Glm4Config,
        Glm4ForCausalLM,
        GlmConfig,
        GlmForCausalLM,
    )

    shape = shape or TinyShape()
    directory.mkdir(parents=True, exist_ok=True)
    vocab = train_tokenizer(directory, shape.vocab_size, shape.max_positions)
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    eos = [tok.token_to_id(t) for t in GLM_TURN_END_TOKENS]
    config_class, model_class = (
        (Glm4Config, Glm4ForCausalLM) if model_type == "glm4" else (GlmConfig, GlmForCausalLM)
    )
    config = glm_config(config_class, vocab, shape, eos)
    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(directory)
    GenerationConfig(
        do_sample=True, temperature=0.8, top_p=0.8, eos_token_id=eos, pad_token_id=eos[0]
    ).save_pretrained(directory)
    return directory


def glm_config(config_class: Any, vocab: int, shape: TinyShape, eos: list[int]) -> Any:
    """A GLM config of ``shape`` for a tokenizer of ``vocab`` tokens ending turns on ``eos``."""
    return config_class(
        # Padded to a multiple of 64 as GLM-4 pads its 151,329-token vocabulary.
        vocab_size=(vocab + 63) // 64 * 64,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_positions,
        partial_rotary_factor=0.5,
        pad_token_id=eos[0],
        eos_token_id=eos,
        bos_token_id=None,
        tie_word_embeddings=False,
    )


def build_tiny(
    out: Path,
    *,
    seed: int = 0,
    shape: TinyShape | None = None,
    options: ExportOptions | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Build the tiny GLM checkpoint and export it to ``out`` (INT8 by default)."""
    with tempfile.TemporaryDirectory(prefix="glm-tiny-") as tmp:
        checkpoint = make_checkpoint(Path(tmp), seed=seed, shape=shape)
        base = options or ExportOptions()
        options = replace(
            base,
            name=base.name or "glm-tiny",
            source_label=f"glm-tiny: GlmForCausalLM, random weights (seed {seed})",
        )
        return export_model(checkpoint, out, options, progress)
