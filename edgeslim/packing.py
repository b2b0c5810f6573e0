"""The packed artifact: an ONNX model whose clustered and sparse weights are stored in as few
bits as they need, and restored exactly.

Clustering leaves each row (output channel) of a weight tensor with at most k distinct values,
also after batch-norm folding and per-channel int8 quantization, which scale whole rows.
Unstructured pruning leaves zeros. Neither shrinks an ONNX file, which stores every weight in
full. The packed file stores each large weight in the smallest of four encodings:

``raw``        the tensor's bytes (left inside the graph)
``rowcode``    per row, a codebook of its distinct values, plus one ceil(log2 K)-bit index per
               weight, K being the largest number of distinct values in a row
``sparse``     a bitmap of the nonzero positions, plus the nonzero values' bytes
``sparsecode`` the bitmap, plus the nonzero values as ``rowcode``

Values are compared bit for bit, so the round trip is exact: ``unpack(pack(m))`` serialises to
the same bytes as ``m``. The loader needs numpy and onnx only, so a device can restore the ONNX
model without the rest of this package::

    python -m edgeslim.packing model.eslim model.onnx

File layout: ``ESLM``, a format byte, a little-endian uint32 header length, a JSON header (the
graph's and each tensor's byte ranges and encodings), then the payload: the ONNX graph with the
packed initializers' data removed, compressed with zlib (node and tensor names repeat a lot),
followed by the tensors' sections.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MAGIC, FORMAT = b"ESLM", 1
SUFFIX = ".eslim"
# Smaller tensors (biases, scales) stay inside the graph: their headers would cost more.
MIN_ELEMENTS = 256
# Values a bit-packing step handles at once (a multiple of 8): bounds its working memory.
CHUNK = 1 << 20


@dataclass(frozen=True)
class Encoded:
    encoding: str
    sections: dict[str, bytes]
    meta: dict[str, int]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.sections.values())


def _bits_for(k: int) -> int:
    return max(1, math.ceil(math.log2(k))) if k > 1 else 1


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers < 2**bits, ``bits`` bits each, little-endian bit order. Works through
    ``CHUNK`` values at a time (a multiple of 8, so each chunk ends on a byte): the bit planes
    of a 100M-weight layer at once would take gigabytes."""
    values = np.asarray(values).reshape(-1)
    shifts = np.arange(bits, dtype=np.uint32)
    out = []
    for start in range(0, values.size, CHUNK):
        part = values[start:start + CHUNK].astype(np.uint32)
        planes = ((part[:, None] >> shifts) & 1).astype(np.uint8)
        out.append(np.packbits(planes.ravel(), bitorder="little").tobytes())
    return b"".join(out)


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """The ``count`` integers ``pack_bits`` packed, as uint8 up to 8 bits (uint32 above),
    ``CHUNK`` at a time."""
    raw = np.frombuffer(data, np.uint8)
    out = np.empty(count, np.uint8 if bits <= 8 else np.uint32)
    weights = (1 << np.arange(bits, dtype=np.uint32))
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        flat = np.unpackbits(raw[start * bits // 8:], bitorder="little", count=n * bits)
        out[start:start + n] = (flat.reshape(n, bits).astype(np.uint32) * weights).sum(axis=1)
    return out


def _rowcode(words: np.ndarray) -> tuple[dict[str, bytes], dict[str, int]] | None:
    """``words`` (rows x n, unsigned ints holding the values' bits) as per-row codebooks plus
    indices; None when some row has more than 256 distinct values."""
    rows = words.shape[0]
    uniques, indices = [], []
    for row in words:
        values, inverse = np.unique(row, return_inverse=True)
        if values.size > 256:
            return None
        uniques.append(values)
        indices.append(inverse.astype(np.uint8))  # at most 256 values: 1 byte, not 8
    k = max(u.size for u in uniques)
    book = np.zeros((rows, k), dtype=words.dtype)
    for r, values in enumerate(uniques):
        book[r, :values.size] = values
    bits = _bits_for(k)
    flat = np.concatenate(indices) if indices else np.zeros(0, np.uint8)
    return {"codebook": book.tobytes(), "indices": pack_bits(flat, bits)}, {"k": k,
                                                                            "bits": bits}


def encode(array: np.ndarray) -> Encoded:
    """The smallest exact encoding of ``array`` (see the module docstring)."""
    itemsize = array.dtype.itemsize
    words = np.ascontiguousarray(array).view(np.dtype(f"<u{itemsize}")).reshape(-1)
    rows = array.shape[0] if array.ndim >= 2 else 1
    options = [Encoded("raw", {"values": words.tobytes()}, {})]
    code = _rowcode(words.reshape(rows, -1))
    if code is not None:
        options.append(Encoded("rowcode", code[0], {"rows": rows, **code[1]}))
    nonzero = words != 0
    if nonzero.mean() < 1.0:
        mask = np.packbits(nonzero, bitorder="little").tobytes()
        options.append(Encoded("sparse", {"mask": mask, "values": words[nonzero].tobytes()}, {}))
        per_row = nonzero.reshape(rows, -1).sum(axis=1)
        kept = words.reshape(rows, -1)[nonzero.reshape(rows, -1)]
        split = np.split(kept, np.cumsum(per_row)[:-1])
        width = int(per_row.max()) if rows else 0
        if width:
            # Ragged rows: encode each row's nonzeros against that row's own codebook.
            # Indices below 256 as 1 byte each (a row with more distinct values is not coded).
            uniques = [(v, i.astype(np.uint8)) for v, i in
                       (np.unique(r, return_inverse=True) for r in split)]
            k = max(u[0].size for u in uniques)
            if k <= 256:
                book = np.zeros((rows, k), dtype=words.dtype)
                for r, (values, _) in enumerate(uniques):
                    book[r, :values.size] = values
                bits = _bits_for(k)
                flat = np.concatenate([u[1] for u in uniques])
                options.append(Encoded("sparsecode", {"mask": mask, "codebook": book.tobytes(),
                                                      "indices": pack_bits(flat, bits)},
                                       {"rows": rows, "k": k, "bits": bits}))
    return min(options, key=lambda e: e.nbytes)


def decode(enc: str, sections: dict[str, bytes], meta: dict[str, int], dtype: np.dtype,
           shape: tuple[int, ...]) -> np.ndarray:
    word = np.dtype(f"<u{dtype.itemsize}")
    n = int(np.prod(shape, dtype=np.int64))
    if enc == "raw":
        words = np.frombuffer(sections["values"], word)
    elif enc in ("rowcode", "sparsecode"):
        rows, k = meta["rows"], meta["k"]
        book = np.frombuffer(sections["codebook"], word).reshape(rows, k)
        if enc == "rowcode":
            index = unpack_bits(sections["indices"], meta["bits"], n).reshape(rows, -1)
            words = np.empty((rows, n // rows), word)
            step = max(1, CHUNK // max(1, n // rows))  # rows at a time: int64 indices are big
            for r in range(0, rows, step):
                words[r:r + step] = np.take_along_axis(
                    book[r:r + step], index[r:r + step].astype(np.int64), axis=1)
            words = words.reshape(-1)
        else:
            mask = np.unpackbits(np.frombuffer(sections["mask"], np.uint8), bitorder="little",
                                 count=n).astype(bool)
            row_of = np.repeat(np.arange(rows), n // rows)[mask]
            index = unpack_bits(sections["indices"], meta["bits"], int(mask.sum()))
            words = np.zeros(n, word)
            words[mask] = book[row_of, index.astype(np.int64)]
    elif enc == "sparse":
        mask = np.unpackbits(np.frombuffer(sections["mask"], np.uint8), bitorder="little",
                             count=n).astype(bool)
        words = np.zeros(n, word)
        words[mask] = np.frombuffer(sections["values"], word)
    else:
        raise ValueError(f"unknown encoding {enc!r}")
    return words.view(dtype).reshape(shape)


def pack(model: onnx.ModelProto) -> bytes:
    """The packed file's bytes for ``model``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    tensors, blobs, offset = [], [], 0
    for t in model.graph.initializer:
        # Tensors kept in typed fields (int32_data, ...) are rare and small: left in the graph,
        # which keeps the round trip byte-exact.
        if not t.HasField("raw_data") or np.prod(t.dims, dtype=np.int64) < MIN_ELEMENTS:
            continue
        array = numpy_helper.to_array(t)
        enc = encode(array)
        if enc.encoding == "raw":
            continue
        sections = {}
        for key, blob in enc.sections.items():
            sections[key] = [offset, len(blob)]
            blobs.append(blob)
            offset += len(blob)
        tensors.append({"name": t.name, "encoding": enc.encoding, "meta": enc.meta,
                        "sections": sections})
        t.ClearField("raw_data")
    graph = zlib.compress(model.SerializeToString(), 9)
    header = json.dumps({"graph": len(graph), "tensors": tensors},
                        separators=(",", ":")).encode()
    return b"".join([MAGIC, bytes([FORMAT]), struct.pack("<I", len(header)), header, graph,
                     *blobs])


def unpack(data: bytes) -> onnx.ModelProto:
    """The ONNX model stored in a packed file's bytes.

    Raises:
        ValueError: when the bytes are not a packed file of a known format.
    """
    if data[:4] != MAGIC or len(data) < 9:
        raise ValueError("not an edgeslim packed model (bad magic bytes)")
    if data[4] != FORMAT:
        raise ValueError(f"packed model format {data[4]} is not supported (expected {FORMAT})")
    (length,) = struct.unpack("<I", data[5:9])
    header = json.loads(data[9:9 + length])
    start = 9 + length
    model = onnx.ModelProto.FromString(zlib.decompress(data[start:start + header["graph"]]))
    payload = start + header["graph"]
    inits = {t.name: t for t in model.graph.initializer}
    for entry in header["tensors"]:
        t = inits[entry["name"]]
        sections = {k: data[payload + o:payload + o + n] for k, (o, n) in
                    entry["sections"].items()}
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        array = decode(entry["encoding"], sections, entry["meta"], dtype, tuple(t.dims))
        t.raw_data = array.tobytes()
    return model


def write_packed(onnx_path: Path, out: Path) -> Path:
    """Packs the ONNX file ``onnx_path`` into ``out`` (atomically)."""
    from edgeslim.fsutil import atomic_write

    data = pack(onnx.load(str(onnx_path)))
    return atomic_write(Path(out), lambda tmp: tmp.write_bytes(data))


def read_packed(path: Path) -> onnx.ModelProto:
    return unpack(Path(path).read_bytes())


def restore_onnx(packed: Path, out: Path) -> Path:
    """Writes the ONNX model stored in the packed file ``packed`` to ``out`` and returns
    ``out``."""
    onnx.save(read_packed(packed), str(out))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m edgeslim.packing MODEL.eslim OUT.onnx", file=sys.stderr)
        return 2
    restore_onnx(Path(args[0]), Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
