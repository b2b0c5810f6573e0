"""Peak inference memory: computed from the graph the runtime executes, and measured in it.

``peak_memory_bytes`` is the measure the search uses (cheap, deterministic, device-independent).
``runtime_memory`` measures what onnxruntime really allocates on this host, so the estimate's
error can be checked (tests/test_memory.py) and reported; see "Peak memory" in
docs/latency-and-memory.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgeslim.errors import CandidateError
from edgeslim.export import value_bytes, value_dims


def peak_memory_bytes(onnx_path: Path, batch: int = 1) -> int:
    """Peak inference memory in bytes: weights plus peak live activations (``memory_bytes``)."""
    weights, activations = memory_bytes(onnx_path, batch)
    return weights + activations


def memory_bytes(onnx_path: Path, batch: int = 1) -> tuple[int, int]:
    """``(weights, activations)`` in bytes at batch ``batch``: the weights, and the largest
    set of simultaneously live activations along the execution order. Their sum is the peak
    inference memory; on a microcontroller that runs weights from flash, the activations alone
    are what RAM must hold.

    The graph is first optimised by onnxruntime at its *basic* level (constant folding, batch
    norm folded into convs, redundant nodes removed), which is what the runtime runs, then shapes
    are inferred for the given batch. Nodes are taken in the graph's topological order; an
    activation is live from the node that produces it to its last consumer (the model input
    from the start, outputs to the end). Weights (initializers) count once, in full.

    A statically quantized (QDQ) graph runs as fused integer kernels (QLinearConv and the like)
    that read and write the 8-bit tensors directly, so the float tensors a QDQ graph spells out
    around them do not exist at run time: outputs of DequantizeLinear, and tensors consumed only
    by QuantizeLinear, count zero; the 8-bit tensors between them count at their size, and a
    fused kernel's 8-bit input stays live until its 8-bit output is written.

    Not counted, because they depend on the CPU's kernels rather than on the model: scratch
    buffers inside kernels (im2col, packed weight copies) and the runtime's fixed costs. Checked
    against ``runtime_memory`` on an x86 host, onnxruntime allocated from 1.01x (VGG-11-BN) to
    2.5x (a 0.5 MB toy with a depthwise conv) this estimate for fp32 models, never less, the
    excess growing with the weights; for int8 artifacts 2.0x to 6.0x, its x86 integer kernels
    holding wider weight copies (benchmarks/results/memory_check.md, tests/test_memory.py).
    """
    graph = _shaped(onnx_path, batch).graph
    weights = sum(_init_bytes(t) for t in graph.initializer)
    init_names = {t.name for t in graph.initializer}
    sizes = {vi.name: value_bytes(vi) for vi in
             list(graph.input) + list(graph.value_info) + list(graph.output)}
    nodes = list(graph.node)
    consumers: dict[str, set[str]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    for node in nodes:
        for out in node.output:
            if node.op_type == "DequantizeLinear" or consumers.get(out) == {"QuantizeLinear"}:
                sizes[out] = 0  # fused away at run time (see above)
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name and name not in init_names:
                last_use[name] = i
    for out in graph.output:
        last_use[out.name] = len(nodes)
    _extend_fused_inputs(nodes, init_names, last_use)
    live = {inp.name for inp in graph.input if inp.name not in init_names}
    peak = sum(sizes.get(n, 0) for n in live)
    for i, node in enumerate(nodes):
        live.update(o for o in node.output if o)
        peak = max(peak, sum(sizes.get(n, 0) for n in live))
        live = {n for n in live if last_use.get(n, -1) > i}
    return int(weights), int(peak)


def _shaped(onnx_path: Path, batch: int) -> onnx.ModelProto:
    """The graph as onnxruntime's basic level optimises it, its shapes inferred at ``batch``."""
    model = _optimized(onnx_path)
    for inp in model.graph.input:
        dim = inp.type.tensor_type.shape.dim
        if dim and not dim[0].HasField("dim_value"):
            dim[0].dim_value = batch
    return onnx.shape_inference.infer_shapes(model)


def _extend_fused_inputs(nodes: list[onnx.NodeProto], init_names: set[str],
                         last_use: dict[str, int]) -> None:
    """In a QDQ graph, DequantizeLinear -> op -> QuantizeLinear runs as one integer kernel:
    the 8-bit tensor the DequantizeLinear reads lives until that QuantizeLinear."""
    consumed_at: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumed_at.setdefault(name, []).append(i)
    for node in nodes:
        if node.op_type != "DequantizeLinear" or node.input[0] in init_names:
            continue
        for c in consumed_at.get(node.output[0], []):
            end = c
            for out in nodes[c].output:
                users = consumed_at.get(out, [])
                if users and all(nodes[u].op_type == "QuantizeLinear" for u in users):
                    end = max(end, *users)
            last_use[node.input[0]] = max(last_use.get(node.input[0], -1), end)


def _optimized(onnx_path: Path) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "basic.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(out))


def _init_bytes(tensor: onnx.TensorProto) -> int:
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


@dataclass(frozen=True)
class RuntimeMemory:
    """What onnxruntime allocated for one model on this host, in bytes, beyond its fixed cost.

    ``session_bytes``: heap growth while the session is created (weights, prepacked weights,
    graph structures); ``run_bytes``: resident memory newly touched by the first inference at
    batch 1 (activations and kernel scratch; the memory arena is off so each buffer is a real
    allocation). Both are net of the same figures for a one-node model with the same input,
    which is what the runtime costs whatever the model.
    """

    session_bytes: int
    run_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.session_bytes + self.run_bytes


def runtime_memory(onnx_path: Path) -> RuntimeMemory:
    """Measures what onnxruntime allocates for ``onnx_path`` (Linux with glibc only): each
    figure comes from a fresh process, from glibc's ``mallinfo2`` (heap in use) around session
    creation, and from the peak resident set size (reset through ``/proc/self/clear_refs``,
    after ``malloc_trim``) around the first run."""
    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(str(onnx_path), load_external_data=False)
        reference = Path(tmp) / "identity.onnx"
        onnx.save(_identity_like(model), str(reference))
        probe = _probe(Path(onnx_path))
        base = _probe(reference)
    return RuntimeMemory(probe["session"] - base["session"], probe["run"] - base["run"])


def _identity_like(model: onnx.ModelProto) -> onnx.ModelProto:
    inp = model.graph.input[0]
    out = onnx.helper.make_tensor_value_info("output", inp.type.tensor_type.elem_type,
                                             value_dims(inp))
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", [inp.name], ["output"])],
                                   "identity", [inp], [out])
    return onnx.helper.make_model(graph, opset_imports=list(model.opset_import),
                                  ir_version=model.ir_version)


def _probe(path: Path) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-m", "edgeslim.evaluators._memprobe", str(path)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise CandidateError(f"memory probe of {path.name} failed: "
                             f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
