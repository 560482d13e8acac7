"""`model verify`: check a model directory's files, hashes, graph, tokenizer and parity figures."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.model.batch import BatchDecoder
from edge_runtime.model.runtime import load_model


def verify_directory(directory: Path, out: TextIO, *, threads: int = 1) -> int:
    """Print what the directory holds and whether it can be served; 0 when it can."""
    try:
        model = load_model(directory, threads=threads, verify="full")
    except EdgeRuntimeError as exc:
        out.write(f"FAIL {exc}\n")
        return 1
    with model:
        manifest = model.manifest
        assert manifest is not None  # verify="full" requires one
        out.write(f"ok   {directory}: {len(manifest.files)} files match manifest.json\n")
        layout = model.decoder.layout
        out.write(
            f"ok   graph {manifest.graph}: {layout.layers} layers, {layout.kv_heads} KV heads "
            f"of {layout.head_dim}, {layout.dtype} cache\n"
        )
        if isinstance(model.decoder, BatchDecoder):
            out.write(
                f"ok   rewritten: GroupQueryAttention, KV cache updated in place "
                f"({model.decoder.rows} rows of {model.decoder.max_length} positions, "
                f"{model.decoder.cache_bytes / 2**20:.0f} MiB)\n"
            )
            if not layout.ragged_prefill:
                out.write(
                    "     an older rewrite: `edge-runtime model optimize` upgrades it to prefill "
                    "prompts of different lengths together\n"
                )
        else:
            out.write("     not rewritten: `edge-runtime model optimize` makes decoding faster\n")
        out.write(
            f"ok   tokenizer: {model.tokenizer.vocab_size} tokens, chat template, "
            f"stops on {list(model.eos_token_ids)}\n"
        )
        quant = manifest.quantization
        out.write(f"     source: {manifest.source.model} ({manifest.source.architecture})\n")
        out.write(f"     quantization: {quant.scheme if quant else 'none (FP32)'}\n")
        if not manifest.parity:
            out.write("warn no parity figures recorded\n")
        for parity in manifest.parity:
            out.write(
                f"     parity {parity.graph} vs {parity.reference}: top-1 agreement "
                f"{parity.top1_agreement:.1%} over {parity.tokens} tokens, identical greedy "
                f"output for {parity.greedy_match:.0%} of {parity.prompts} prompts\n"
            )
    return 0
