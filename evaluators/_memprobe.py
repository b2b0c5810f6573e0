"""Run as ``python -m edgeslim.evaluators._memprobe MODEL.onnx``: prints, as JSON, the heap
growth of creating an onnxruntime session for the model and the resident memory its first
inference touches (see ``edgeslim.evaluators.memory.runtime_memory``). Linux and glibc only."""

from __future__ import annotations

import ctypes
import json
import sys

import numpy as np
import onnxruntime as ort


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def main(path: str) -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2

    def heap_in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd  # small and large (mmapped) blocks in use

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False  # every buffer a real allocation, freed when dead
    before = heap_in_use()
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    session_bytes = heap_in_use() - before
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(inp.type,
                                                                             np.float32)
    feed = {inp.name: np.zeros(shape, dtype)}
    libc.malloc_trim(0)
    resident = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size to the current one
    session.run(None, feed)
    print(json.dumps({"session": session_bytes, "run": status("VmHWM") - resident}))


if __name__ == "__main__":
    main(sys.argv[1])
