"""Accuracy of the deployable artifact, run in its deployment runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeslim.data import DataBundle, Split
from edgeslim.export import INPUT_NAME, ort_session, runtime_errors
from edgeslim.timing import timed


@timed("measuring")
def onnx_accuracy(onnx_path: Path, split: Split, data: DataBundle, threads: int = 2,
                  batch_size: int = 256) -> float:
    """val_acc / test_acc: top-1 accuracy (fraction correct) of the ONNX file run in
    onnxruntime CPU over every image of ``split``, with the dataset's normalisation.

    Raises:
        CandidateError: when onnxruntime refuses the file or fails to run it.
    """
    session = ort_session(onnx_path, threads=threads)
    correct = 0
    for i in range(0, len(split), batch_size):
        x = data.normalize(split.x[i:i + batch_size]).numpy()
        # A kernel can fail on this file's graph at run time (a shape only a batch reveals).
        with runtime_errors(onnx_path):
            logits = session.run(None, {INPUT_NAME: x})[0]
        correct += int((np.argmax(logits, axis=1) == split.y[i:i + batch_size].numpy()).sum())
    return correct / len(split)
