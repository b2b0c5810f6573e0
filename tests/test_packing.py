"""The packed artifact (exact round trip, sizes worked out by hand) and ONNX quantization."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from edgeslim.compress import cluster_weights, quantize_onnx, sparsify
from edgeslim.export import INPUT_NAME, write_onnx
from edgeslim.packing import encode, main, pack, pack_bits, read_packed, unpack, unpack_bits
from toys import PlainNet

X = torch.zeros(1, 1, 8, 8)


def test_bits_are_packed_little_endian():
    assert pack_bits(np.array([1, 0, 1, 1]), 1) == bytes([0b1101])
    assert pack_bits(np.array([3, 1]), 2) == bytes([0b0111])
    values = np.arange(8)
    assert unpack_bits(pack_bits(values, 3), 3, 8).tolist() == list(range(8))


def test_clustered_rows_take_codebooks_and_indices():
    rng = np.random.default_rng(0)
    array = rng.choice(np.array([-0.5, 0.25, 1.0], np.float32), size=(4, 64))
    enc = encode(array)
    # per row a codebook of 3 float32 values (4 x 3 x 4 bytes) + 2-bit indices (256 x 2 / 8)
    assert (enc.encoding, enc.meta) == ("rowcode", {"rows": 4, "k": 3, "bits": 2})
    assert enc.nbytes == 48 + 64


def test_sparse_weights_take_a_bitmap_and_their_values():
    rng = np.random.default_rng(0)
    array = np.zeros(1000, np.float32)
    array[rng.choice(1000, 100, replace=False)] = rng.standard_normal(100).astype(np.float32)
    enc = encode(array)
    # bitmap 1000 / 8 bytes + 100 float32 values
    assert enc.encoding == "sparse" and enc.nbytes == 125 + 400


def _onnx_of(model, path) -> onnx.ModelProto:
    return onnx.load(str(write_onnx(model.eval(), X, path)))


@pytest.mark.parametrize("mode", ["none", "int8_static", "fp16"])
def test_round_trip_is_byte_exact(tmp_path, digits, mode):
    torch.manual_seed(0)
    m = PlainNet()
    sparsify(m, 0.4, ["conv1"])
    cluster_weights(m, {"conv2": 16, "fc": 8})
    src = write_onnx(m.eval(), X, tmp_path / "float.onnx")
    calib = [digits.normalize(digits.train.x[:32]).numpy()]
    path = quantize_onnx(src, tmp_path / "q.onnx", mode, iter(calib))
    model = onnx.load(str(path))
    data = pack(model)
    assert unpack(data).SerializeToString() == model.SerializeToString()
    # clustered and sparse weights need fewer bits than the file stores them in
    assert len(data) < path.stat().st_size


def test_packed_file_restores_a_runnable_onnx_file(tmp_path):
    torch.manual_seed(0)
    m = PlainNet()
    cluster_weights(m, {"conv2": 16})
    model = _onnx_of(m, tmp_path / "m.onnx")
    (tmp_path / "m.eslim").write_bytes(pack(model))
    assert main([str(tmp_path / "m.eslim"), str(tmp_path / "back.onnx")]) == 0
    x = torch.randn(2, 1, 8, 8)
    session = ort.InferenceSession(str(tmp_path / "back.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, m(x).numpy(), atol=1e-5)
    assert read_packed(tmp_path / "m.eslim").SerializeToString() == model.SerializeToString()


def test_a_file_that_is_not_packed_is_refused():
    with pytest.raises(ValueError) as err:
        unpack(b"PK\x03\x04 not ours")
    assert str(err.value) == "not an edgeslim packed model (bad magic bytes)"


def _weights(path) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


def test_int8_static_stores_int8_weights_per_channel(tmp_path, digits):
    src = write_onnx(PlainNet().eval(), X, tmp_path / "f.onnx")
    calib = [digits.normalize(digits.train.x[:64]).numpy()]
    q = quantize_onnx(src, tmp_path / "q.onnx", "int8_static", iter(calib))
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = {name: tuple(t.dims) for name, t in _weights(q).items()
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2}
    # conv1 and conv2 (batch norm folded in) and fc, each with one scale per output channel
    assert sorted(int8.values()) == [(10, 32), (16, 1, 3, 3), (32, 16, 3, 3)]
    scales = {tuple(t.dims) for name, t in _weights(q).items() if name.endswith("_scale")}
    assert {(16,), (32,), (10,)} <= scales


def test_int8_calibration_held_one_batch_at_a_time_sets_the_same_ranges(tmp_path, monkeypatch):
    import edgeslim.compress.quantize as quantize

    src = write_onnx(PlainNet().eval(), X, tmp_path / "f.onnx")
    # batches of growing spread, so that each one widens some range the one before set
    calib = [np.random.default_rng(i).normal(0, 1 + 2 * i, (16, 1, 8, 8)).astype(np.float32)
             for i in range(3)]
    ranges = {}
    for held in (None, 1):
        monkeypatch.setattr(quantize, "HELD_BATCHES", held)
        ranges[held] = _ranges(quantize_onnx(src, tmp_path / f"q{held}.onnx", "int8_static",
                                             iter(calib)))
    assert ranges[None] and ranges[None] == ranges[1]
    first = _ranges(quantize_onnx(src, tmp_path / "first.onnx", "int8_static", iter(calib[:1])))
    assert first != ranges[1]  # the later batches did widen the ranges


def test_int8_calibration_batches_are_cut_to_a_memory_bound_with_the_same_ranges(tmp_path,
                                                                                 monkeypatch):
    """MaxViT-T at 224x224: 64 images a batch made the calibrator hold 8.5 GB of activations."""
    import edgeslim.compress.quantize as quantize

    src = write_onnx(PlainNet().eval(), X, tmp_path / "f.onnx")
    calib = [np.random.default_rng(i).normal(0, 1 + 2 * i, (16, 1, 8, 8)).astype(np.float32)
             for i in range(3)]
    seen = []
    split = quantize._split
    monkeypatch.setattr(quantize, "_split", lambda b, n: seen.append(split(b, n)) or seen[-1])
    ranges = {}
    for bound in (1 << 30, 1):  # every batch whole; one image a batch
        monkeypatch.setattr(quantize, "CALIBRATION_BATCH_BYTES", bound)
        ranges[bound] = _ranges(quantize_onnx(src, tmp_path / f"q{bound}.onnx", "int8_static",
                                              iter(calib)))
    whole, single = seen
    assert [len(b) for b in whole] == [16, 16, 16] and [len(b) for b in single] == [1] * 48
    assert np.array_equal(np.concatenate(single), np.concatenate(calib))
    assert ranges[1 << 30] and ranges[1 << 30] == ranges[1]
    # A bound of eight images' activations (the graph's shapes inferred, as the quantizer's
    # pre-processing does): batches of eight.
    shaped = tmp_path / "shaped.onnx"
    onnx.shape_inference.infer_shapes_path(str(src), str(shaped))
    image = quantize._image_bytes(shaped)
    assert image >= 4 * 8 * 8 * 16  # at least the first conv's 16 maps of 8x8
    monkeypatch.setattr(quantize, "CALIBRATION_BATCH_BYTES", 8 * image)
    assert [len(b) for b in split(calib, image)] == [8] * 6


def _ranges(path) -> dict[str, list]:
    return {name: numpy_helper.to_array(t).tolist() for name, t in _weights(path).items()
            if name.endswith(("_scale", "_zero_point"))}


def test_int8_dynamic_quantizes_activations_at_run_time(tmp_path):
    src = write_onnx(PlainNet().eval(), X, tmp_path / "f.onnx")
    q = quantize_onnx(src, tmp_path / "q.onnx", "int8_dynamic")
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert "DynamicQuantizeLinear" in ops and "ConvInteger" in ops


def test_fp16_halves_the_weights_and_keeps_float32_compute(tmp_path):
    torch.manual_seed(0)
    m = PlainNet().eval()
    src = write_onnx(m, X, tmp_path / "f.onnx")
    q = quantize_onnx(src, tmp_path / "h.onnx", "fp16")
    halves = {name for name, t in _weights(q).items() if t.data_type == onnx.TensorProto.FLOAT16}
    assert len(halves) == 3  # conv1, conv2 and fc weights
    casts = [n for n in onnx.load(str(q)).graph.node if n.op_type == "Cast"]
    assert len(casts) == 3
    x = torch.randn(2, 1, 8, 8)
    got = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(
        None, {INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, m(x).numpy(), atol=2e-2)


def test_unknown_quantization_mode(tmp_path):
    with pytest.raises(ValueError) as err:
        quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", "int4")
    assert str(err.value) == ("unknown quantization mode 'int4'; valid: none, int8_static, "
                              "int8_dynamic, fp16")


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_bits_are_packed_a_chunk_at_a_time_as_at_once(monkeypatch, bits):
    from edgeslim import packing

    values = np.random.default_rng(bits).integers(0, 1 << bits, 1001)
    whole = packing.pack_bits(values, bits)
    monkeypatch.setattr(packing, "CHUNK", 64)  # 16 chunks, the last one partial
    assert packing.pack_bits(values, bits) == whole
    assert packing.unpack_bits(whole, bits, values.size).tolist() == values.tolist()
