"""Rewrite an optimum GLM decoder graph for CPU inference: fused attention, in-place KV cache.

optimum's graph spends most of a decode step in hundreds of small shape, mask and rotary kernels,
and it concatenates the past and the new keys and values every step (a copy of the whole cache per
token). The rewrite replaces each layer's attention with one ``com.microsoft.GroupQueryAttention``
node that applies GLM's partial interleaved rotary embedding itself and writes the new keys and
values in place into a cache preallocated to the context length; then onnxruntime's transformer
optimizer fuses the RMS norms and residual adds (``SkipSimplifiedLayerNormalization``); and the
language-model head runs on each row's last real position only, so a batch of right-padded
prompts can be prefilled in one run.

Nodes are found by what they compute (weights and graph outputs), not by exported names, so the
rewrite holds for ``glm`` and ``glm4`` of any size, with or without projection biases. The graph
keeps the optimum I/O names, so a feed-back loop can drive it as well; its metadata tells the
runtime that past and present may share one buffer (see runtime.GraphLayout).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import ExportError

# Written into the graph's metadata_props; the runtime reads them back from the session.
KV_CACHE_KEY = "edge_runtime.kv_cache"
KV_CACHE_SHARED = "shared_buffer"
LOGITS_KEY = "edge_runtime.logits"
# Rewrite 1: the last position of the batch, so every row of a prompt batch must be as long.
LOGITS_LAST = "last_position"
# Rewrite 2: each row's last real position, found from the attention mask.
LOGITS_LAST_PER_ROW = "last_position_per_row"
OPTIMIZED_KEY = "edge_runtime.optimized"
REWRITE_VERSION = "2"
_MS = "com.microsoft"
_QUANTIZED_OPS = frozenset({"MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits"})


@dataclass(frozen=True, slots=True)
class AttentionShape:
    """What GroupQueryAttention needs to know of the model (from config.json)."""

    heads: int
    kv_heads: int
    head_dim: int
    rotary_dim: int
    rope_theta: float
    max_positions: int

    @classmethod
    def of(cls, config: Any) -> AttentionShape:
        """Read the attention shape from a transformers config; refuse what GQA cannot do."""
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        factor = float(getattr(config, "partial_rotary_factor", 1.0))
        rotary_dim = int(head_dim * factor)
        scaling = getattr(config, "rope_scaling", None)
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise ExportError(f"rope_scaling {scaling!r} is not supported by the rewrite")
        # GroupQueryAttention's CPU rotary kernel works on blocks of 8 cosines.
        if rotary_dim % 16:
            raise ExportError(
                f"rotary dimension {rotary_dim} (head_dim {head_dim} × {factor}) is not a "
                "multiple of 16, which GroupQueryAttention's rotary kernel needs"
            )
        return cls(
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=head_dim,
            rotary_dim=rotary_dim,
            rope_theta=float(getattr(config, "rope_theta", 10000.0)),
            max_positions=int(config.max_position_embeddings),
        )

    def rotary_caches(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """cos and sin of position × frequency, shape [max_positions, rotary_dim / 2]."""
        half = self.rotary_dim // 2
        inverse = self.rope_theta ** (-np.arange(half, dtype=np.float64) * 2 / self.rotary_dim)
        angles = np.outer(np.arange(self.max_positions, dtype=np.float64), inverse)
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@dataclass(frozen=True, slots=True)
class RewriteReport:
    """What the rewrite changed."""

    layers: int
    nodes_before: int
    nodes_after: int
    fused_norms: int = 0


@dataclass(frozen=True, slots=True)
class _Projection:
    """A matrix product with a weight: FP32 MatMul, MatMulNBits, or quantize_dynamic's form."""

    node: Any
    rows: int
    cols: int
    # The node whose first input is the activation (the DynamicQuantizeLinear feeding a
    # MatMulInteger, else the node itself), and the float result before any bias.
    source: Any
    output: str


class _Graph:
    """Lookups over an onnx GraphProto: producers, consumers, weight projections."""

    def __init__(self, graph: Any):
        self.graph = graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.projections = {
            id(node): found for node in graph.node if (found := self._projection(node))
        }
        # A projection's DynamicQuantizeLinear starts it too: its scale output flows around
        # the MatMulInteger into the result.
        self._entries = {id(p.source): p for p in self.projections.values()}

    def _projection(self, node: Any) -> _Projection | None:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            return _Projection(node, attrs["K"], attrs["N"], node, node.output[0])
        if node.op_type not in ("MatMul", "MatMulInteger") or len(node.input) < 2:
            return None
        weight = self.initializer(node.input[1])
        if weight is None or len(weight.dims) != 2:
            return None
        rows, cols = (int(d) for d in weight.dims)
        if node.op_type == "MatMul":
            return _Projection(node, rows, cols, node, node.output[0])
        # quantize_dynamic: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale).
        source = self.producer.get(node.input[0])
        cast = self._only_consumer(node.output[0], "Cast")
        scaled = self._only_consumer(cast.output[0], "Mul") if cast is not None else None
        if source is None or source.op_type != "DynamicQuantizeLinear" or scaled is None:
            return None
        return _Projection(node, rows, cols, source, scaled.output[0])

    def _only_consumer(self, name: str, op_type: str) -> Any | None:
        found = self.consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def projection(self, node: Any) -> _Projection | None:
        """The projection ``node`` is or starts, if any."""
        return self.projections.get(id(node)) or self._entries.get(id(node))

    def bias(self, projection: _Projection) -> tuple[Any, Any] | None:
        """The Add that biases the projection's output, and its bias initializer, if any."""
        for consumer in self.consumers.get(projection.output, []):
            if consumer.op_type != "Add":
                continue
            for name in consumer.input:
                init = self.initializer(name)
                if init is not None and len(init.dims) == 1:
                    return consumer, init
        return None

    def initializer(self, name: str) -> Any | None:
        """The initializer ``name`` is, seen through Identity nodes.

        optimum stores equal weights once (zero biases, say) and hands the copies out through
        Identity nodes.
        """
        while name not in self.initializers:
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return self.initializers[name]

    def biased(self, projection: _Projection) -> str:
        """The projection's output: after its bias Add when there is one."""
        found = self.bias(projection)
        return str(found[0].output[0]) if found else projection.output

    def downstream(self, start: str) -> Iterator[Any]:
        """Nodes forward from ``start``, breadth first; a path ends at a projection.

        What lies beyond the output projection belongs to the next layers.
        """
        seen, queue = {start}, deque([start])
        while queue:
            for node in self.consumers.get(queue.popleft(), []):
                yield node
                if self.projection(node) is not None:
                    continue
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        queue.append(out)

    def reaches(self, start: str, stop: Iterable[str]) -> set[str]:
        """Which of the ``stop`` names are reachable from ``start`` within its layer."""
        wanted = set(stop)
        return {
            out
            for node in self.downstream(start)
            if self.projection(node) is None
            for out in node.output
            if out in wanted
        }

    def first_projection(self, start: str, rows: int) -> _Projection | None:
        """The first projection forward from ``start`` whose weight has ``rows`` rows."""
        for node in self.downstream(start):
            found = self.projection(node)
            if found is not None and found.rows == rows:
                return found
        return None


def rewrite(model: Any, shape: AttentionShape) -> RewriteReport:
    """Rewrite ``model`` (an onnx ModelProto from optimum's GLM export) in place."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    before = len(graph.node)
    if any(node.op_type == "GroupQueryAttention" for node in graph.node):
        raise ExportError("the graph is already rewritten (it has GroupQueryAttention nodes)")
    g = _Graph(graph)
    outputs = [o.name for o in graph.output]
    presents = [name for name in outputs if name.startswith("present.")]
    q_width, kv_width = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    layers: dict[int, tuple[list[str], _Projection]] = {}
    # Each layer: three projections of one normed input; k and v are told apart, and their
    # layer found, by which present output each flows into.
    by_input: dict[str, list[_Projection]] = {}
    for projection in g.projections.values():
        by_input.setdefault(projection.node.input[0], []).append(projection)
    for group in by_input.values():
        widths = sorted(p.cols for p in group)
        if widths != sorted([q_width, kv_width, kv_width]):
            continue
        # The query flows into no present; the key into present.{layer}.key, the value into
        # present.{layer}.value (widths alone cannot tell them apart when heads = KV heads).
        found: dict[str, str] = {}
        roles: dict[str, _Projection] = {}
        layer = -1
        for projection in group:
            out = g.biased(projection)
            reached = g.reaches(out, presents)
            if not reached and projection.cols == q_width:
                found["query"], roles["query"] = out, projection
                continue
            if len(reached) != 1:
                raise ExportError(
                    f"{projection.node.name}: flows into {sorted(reached)}, not one present"
                )
            kind = next(iter(reached))
            layer = int(kind.split(".")[1])
            role = "key" if kind.endswith(".key") else "value"
            found[role], roles[role] = out, projection
        if sorted(found) != ["key", "query", "value"]:
            raise ExportError(f"layer {layer}: cannot tell the query, key and value apart")
        o_proj = g.first_projection(found["value"], q_width)
        if o_proj is None:
            raise ExportError(f"layer {layer}: no output projection after the attention")
        # One packed projection where the weights are plain floats; GroupQueryAttention
        # then takes the packed result alone.
        packed = _pack_qkv(graph, g, layer, [roles[r] for r in ("query", "key", "value")])
        qkv = [packed, "", ""] if packed else [found[r] for r in ("query", "key", "value")]
        layers[layer] = (qkv, o_proj)
    expected = len(presents) // 2
    if sorted(layers) != list(range(expected)) or not expected:
        raise ExportError(
            f"found attention in layers {sorted(layers)}, the graph has {expected} layers"
        )

    cos, sin = shape.rotary_caches()
    graph.initializer.extend(
        [
            numpy_helper.from_array(cos, "gqa.cos_cache"),
            numpy_helper.from_array(sin, "gqa.sin_cache"),
        ]
    )
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), "gqa.axis_1"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "gqa.one_scalar"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "gqa.one"),
        ]
    )
    # Shared by every layer: the per-row length, and the total length, from the mask.
    shared = [
        helper.make_node(
            "ReduceSum", ["attention_mask", "gqa.axis_1"], ["gqa.mask_sum"], keepdims=0
        ),
        helper.make_node("Sub", ["gqa.mask_sum", "gqa.one"], ["gqa.seqlens_64"]),
        helper.make_node("Cast", ["gqa.seqlens_64"], ["gqa.seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["gqa.mask_shape"]),
        helper.make_node("Gather", ["gqa.mask_shape", "gqa.one_scalar"], ["gqa.total_64"], axis=0),
        helper.make_node("Cast", ["gqa.total_64"], ["gqa.total_length"], to=TensorProto.INT32),
    ]
    fused = []
    for layer, (qkv, o_proj) in sorted(layers.items()):
        present_key, present_value = f"present.{layer}.key", f"present.{layer}.value"
        # The old producers of the presents are left without outputs and pruned below.
        for name in (present_key, present_value):
            producer = g.producer[name]
            producer.output[list(producer.output).index(name)] = f"{name}.unused"
        attended = f"gqa.{layer}.output"
        fused.append(
            helper.make_node(
                "GroupQueryAttention",
                [
                    *qkv,
                    f"past_key_values.{layer}.key",
                    f"past_key_values.{layer}.value",
                    "gqa.seqlens_k",
                    "gqa.total_length",
                    "gqa.cos_cache",
                    "gqa.sin_cache",
                ],
                [attended, present_key, present_value],
                name=f"gqa.{layer}",
                domain=_MS,
                num_heads=shape.heads,
                kv_num_heads=shape.kv_heads,
                scale=1.0 / math.sqrt(shape.head_dim),
                do_rotary=1,
                # GLM rotates interleaved pairs of the first rotary_dim channels.
                rotary_interleaved=1,
            )
        )
        o_proj.source.input[0] = attended
    _last_position_logits(graph, g)
    _static_mlp_split(graph, g)
    graph.node.extend(shared + fused)
    _topological_sort(graph)
    _prune(graph)
    if not any(op.domain == _MS for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS, 1))
    for key, val in (
        (KV_CACHE_KEY, KV_CACHE_SHARED),
        (LOGITS_KEY, LOGITS_LAST_PER_ROW),
        (OPTIMIZED_KEY, REWRITE_VERSION),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, val
    return RewriteReport(layers=len(layers), nodes_before=before, nodes_after=len(graph.node))


def optimize_graph(source: Path, out: Path, config: Any, *, large: bool = False) -> RewriteReport:
    """Rewrite the graph file ``source`` into ``out`` (see the module doc).

    ``config`` is the model's transformers config (or its config.json as a namespace);
    ``large`` writes the weights as external data, as graphs over 2 GB must be. The norms are
    fused in float graphs only: in a quantize_dynamic graph the fused kernel's rounding would
    reach the next activation quantization and change tokens. A graph of an older rewrite is
    upgraded to this one.
    """
    import onnx

    shape = AttentionShape.of(config)
    model = onnx.load(str(source))
    version = rewrite_version(model)
    if version == REWRITE_VERSION:
        raise ExportError(f"{source} is already rewritten (rewrite {version})")
    if version is not None:
        report = upgrade(model)
        fused = model
    else:
        report = rewrite(model, shape)
        quantized = any(node.op_type in _QUANTIZED_OPS for node in model.graph.node)
        fused = model if quantized else _fuse_norms(model, int(config.hidden_size), shape.heads)
    onnx.save(
        fused,
        str(out),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=f"{out.name}_data",
    )
    return replace(report, nodes_after=len(fused.graph.node), fused_norms=_count_norms(fused))


def is_optimized(model: Any) -> bool:
    """Whether an onnx ModelProto went through the current version of this rewrite."""
    return rewrite_version(model) == REWRITE_VERSION


def _fuse_norms(model: Any, hidden: int, heads: int) -> Any:
    """RMS norms into SimplifiedLayerNormalization, residual adds into the Skip variant."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("gpt2")
    # Attention is already fused; the optimizer's own attention patterns do not fit GLM.
    options.enable_attention = False
    options.enable_rotary_embeddings = False
    optimized = optimize_model(
        model,
        model_type="gpt2",
        num_heads=heads,
        hidden_size=hidden,
        opt_level=0,
        optimization_options=options,
    )
    return optimized.model


def _count_norms(model: Any) -> int:
    kinds = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")
    return sum(node.op_type in kinds for node in model.graph.node)


def _pack_qkv(graph: Any, g: _Graph, layer: int, projections: list[_Projection]) -> str | None:
    """One MatMul (and bias Add) for the query, key and value projections; None if not float.

    Three narrow matrix products become one wide one: fewer kernels per step, and a single
    read of the activations.
    """
    from onnx import helper, numpy_helper

    if any(p.node.op_type != "MatMul" for p in projections):
        return None
    found = [g.initializer(p.node.input[1]) for p in projections]
    weights = [numpy_helper.to_array(w) for w in found if w is not None]
    biases = [_bias_of(g, p) for p in projections]
    if len(weights) != 3 or any(w.dtype != np.float32 for w in weights):
        return None
    if len({b is None for b in biases}) != 1:
        return None
    name = f"gqa.{layer}.qkv"
    graph.initializer.append(
        numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}.weight")
    )
    source = projections[0].node.input[0]
    graph.node.append(
        helper.make_node("MatMul", [source, f"{name}.weight"], [f"{name}.matmul"], name=name)
    )
    if biases[0] is None:
        return f"{name}.matmul"
    bias = np.concatenate([b for b in biases if b is not None])
    graph.initializer.append(numpy_helper.from_array(bias, f"{name}.bias"))
    graph.node.append(
        helper.make_node("Add", [f"{name}.matmul", f"{name}.bias"], [name], name=f"{name}.add")
    )
    return name


def _bias_of(g: _Graph, projection: _Projection) -> np.ndarray[Any, Any] | None:
    from onnx import numpy_helper

    found = g.bias(projection)
    return np.asarray(numpy_helper.to_array(found[1])) if found else None


def _static_mlp_split(graph: Any, g: _Graph) -> None:
    """Split each fused gate/up projection into its halves with one static Split.

    optimum exports ``gate, up = gate_up.chunk(2, -1)`` as two Slices whose bounds come from a
    Shape/Gather/Div/Mul chain run every step; the width is known, so one Split does it.
    """
    from onnx import helper, numpy_helper

    for projection in list(g.projections.values()):
        if projection.node.op_type != "MatMul" or projection.cols % 2:
            continue
        out = g.biased(projection)
        slices = [n for n in g.consumers.get(out, []) if n.op_type == "Slice"]
        others = [n for n in g.consumers.get(out, []) if n.op_type not in ("Slice", "Shape")]
        if len(slices) != 2 or others:
            continue
        starts = [_constant(g, node.input[1]) for node in slices]
        if 0 not in starts:
            continue
        first, second = slices if starts[0] == 0 else slices[::-1]
        half = projection.cols // 2
        name = f"{projection.node.name}.split"
        graph.initializer.append(numpy_helper.from_array(np.array([half, half]), f"{name}.sizes"))
        graph.node.append(
            helper.make_node(
                "Split",
                [out, f"{name}.sizes"],
                [first.output[0], second.output[0]],
                name=name,
                axis=-1,
            )
        )
        for node in (first, second):
            node.output[0] = f"{node.output[0]}.unused"


def _constant(g: _Graph, name: str) -> int | None:
    """The single integer a Constant node or initializer holds, if it is one."""
    from onnx import numpy_helper

    node = g.producer.get(name)
    if node is not None and node.op_type == "Constant":
        values = [numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"]
    elif name in g.initializers:
        values = [numpy_helper.to_array(g.initializers[name])]
    else:
        return None
    if len(values) != 1 or values[0].size != 1:
        return None
    return int(values[0].reshape(-1)[0])


def _last_position_logits(graph: Any, g: _Graph) -> None:
    """Point the language-model head at each row's last real position.

    At prefill this skips the head for every other prompt position (for a 151k-token
    vocabulary, a [1, S, 151552] tensor); a decode step has one position anyway.
    """
    heads = [p for p in g.projections.values() if p.output == "logits"]
    if len(heads) != 1:
        raise ExportError("logits is not produced by a weight MatMul (the language-model head)")
    head = heads[0].source
    head.input[0] = _gather_last_positions(graph, head.input[0])


def _gather_last_positions(graph: Any, hidden: str) -> str:
    """Nodes taking ``hidden`` [B, S, H] to [B, 1, H] at each row's last real position.

    Rows are right-padded, so a row whose mask holds ``n`` ones and which brings ``S`` new
    tokens over a mask ``T`` wide ends at ``n - 1 - (T - S)``: the last prompt token at a
    first prefill, ``S - 1`` for a single sequence, and below 0 (clipped to 0) for the shorter
    rows of a decode step, whose one position is the only one.
    """
    from onnx import helper, numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), "lm_head.zero"))
    out = "lm_head.last_position"
    graph.node.extend(
        [
            helper.make_node("Shape", ["input_ids"], ["lm_head.ids_shape"]),
            helper.make_node(
                "Gather", ["lm_head.ids_shape", "gqa.one_scalar"], ["lm_head.new"], axis=0
            ),
            helper.make_node("Add", ["gqa.seqlens_64", "lm_head.new"], ["lm_head.end"]),
            helper.make_node("Sub", ["lm_head.end", "gqa.total_64"], ["lm_head.offset"]),
            helper.make_node("Max", ["lm_head.offset", "lm_head.zero"], ["lm_head.index_1d"]),
            helper.make_node("Unsqueeze", ["lm_head.index_1d", "gqa.axis_1"], ["lm_head.index"]),
            helper.make_node("GatherND", [hidden, "lm_head.index"], ["lm_head.rows"], batch_dims=1),
            helper.make_node("Unsqueeze", ["lm_head.rows", "gqa.axis_1"], [out], name=out),
        ]
    )
    return out


def rewrite_version(model: Any) -> str | None:
    """Which version of this rewrite an onnx ModelProto went through, if any."""
    for prop in model.metadata_props:
        if prop.key == OPTIMIZED_KEY:
            return str(prop.value)
    return None


def upgrade(model: Any) -> RewriteReport:
    """Bring a graph of rewrite 1 up to the current one, in place.

    Rewrite 1 sliced the batch's last position before the head; the head now gathers each
    row's own last position, which lets the runtime prefill prompts of different lengths
    together. Nothing else changed between them.
    """
    graph = model.graph
    version = rewrite_version(model)
    if version != "1":
        raise ExportError(f"cannot upgrade a graph of rewrite {version!r} to {REWRITE_VERSION}")
    before = len(graph.node)
    slices = [n for n in graph.node if n.op_type == "Slice" and "lm_head.slice_start" in n.input]
    if len(slices) != 1:
        raise ExportError("rewrite 1 graph without its last-position Slice before the head")
    old = slices[0]
    # The gather's output takes the Slice's name (lm_head.last_position), so the head reads
    # it unchanged; the rewiring below only matters to a graph that renamed it.
    new = _gather_last_positions(graph, old.input[0])
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old.output[0]:
                node.input[i] = new
    graph.node.remove(old)
    _topological_sort(graph)
    _prune(graph)
    for prop in model.metadata_props:
        if prop.key == LOGITS_KEY:
            prop.value = LOGITS_LAST_PER_ROW
        elif prop.key == OPTIMIZED_KEY:
            prop.value = REWRITE_VERSION
    layers = sum(1 for n in graph.node if n.op_type == "GroupQueryAttention")
    norms = _count_norms(model)
    return RewriteReport(layers, before, len(graph.node), norms)


def _prune(graph: Any) -> None:
    """Drop nodes, initializers and inputs nothing reaches the outputs through."""
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(name in live for name in node.output):
            keep.append(node)
            live.update(name for name in node.input if name)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [init for init in graph.initializer if init.name in live]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name in live]
    del graph.input[:]
    graph.input.extend(inputs)
    infos = [v for v in graph.value_info if v.name in live]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _topological_sort(graph: Any) -> None:
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(
                f"the rewritten graph has a cycle or a dangling input at {rest[0].name}"
            )
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
