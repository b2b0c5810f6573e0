"""Peak inference memory, computed from the graph the runtime executes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def peak_memory_bytes(onnx_path: Path, batch: int = 1) -> int:
    """Peak inference memory in bytes, batch ``batch``: the weights plus the largest set of
    simultaneously live activations along the execution order.

    The graph is first optimised by onnxruntime at its *basic* level (constant folding, batch
    norm folded into convs, redundant nodes removed), which is what the runtime runs, then shapes
    are inferred for the given batch. Nodes are taken in the graph's topological order; an
    activation is live from the node that produces it to its last consumer (the model input
    from the start, outputs to the end). Weights (initializers) count once, in full. Workspace
    buffers inside kernels (im2col, packed weights) are not counted.
    """
    model = _optimized(onnx_path)
    graph = model.graph
    for inp in graph.input:
        dim = inp.type.tensor_type.shape.dim
        if dim and not dim[0].HasField("dim_value"):
            dim[0].dim_value = batch
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    weights = sum(_init_bytes(t) for t in graph.initializer)
    init_names = {t.name for t in graph.initializer}
    sizes = {vi.name: _value_bytes(vi) for vi in
             list(graph.input) + list(graph.value_info) + list(graph.output)}
    nodes = list(graph.node)
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name and name not in init_names:
                last_use[name] = i
    for out in graph.output:
        last_use[out.name] = len(nodes)
    live = {inp.name for inp in graph.input if inp.name not in init_names}
    peak = sum(sizes.get(n, 0) for n in live)
    for i, node in enumerate(nodes):
        live.update(o for o in node.output if o)
        peak = max(peak, sum(sizes.get(n, 0) for n in live))
        live = {n for n in live if last_use.get(n, -1) > i}
    return int(weights + peak)


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


def _value_bytes(info: onnx.ValueInfoProto) -> int:
    ttype = info.type.tensor_type
    if not ttype.HasField("shape"):
        return 0
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in ttype.shape.dim]
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)).itemsize
    return int(np.prod(dims, dtype=np.int64)) * itemsize
