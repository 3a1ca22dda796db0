"""Malformed files of each kind (issue 34's fuzz-style check): truncated, random, empty, of the wrong type, claiming
sizes they do not hold, cyclic. The linter and the loaders answer each with one line naming the problem and a
non-zero exit, never a traceback or a clean result."""
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import run_cli


def _qdq_model() -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(DQ'd int8 weights) -> y: a valid Q/DQ graph to damage."""
    weight = helper.make_tensor("w", TensorProto.INT8, [2, 1, 1, 1], [3, -4])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wd"], axis=0),
             helper.make_node("Conv", ["d", "wd"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
                              [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), weight,
                               helper.make_tensor("zp", TensorProto.INT8, [], [0]),
                               helper.make_tensor("wzp", TensorProto.INT8, [2], [0, 0]),
                               helper.make_tensor("ws", TensorProto.FLOAT, [2], [0.01, 0.02])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


# files that are no file of any kind: the same three stand in for an ONNX and for a model file
GARBAGE = {"random bytes": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "empty": b"",
           "text": b"import torch\n"}


def _damaged_onnx(case: str) -> bytes:
    if case in GARBAGE:
        return GARBAGE[case]
    model = _qdq_model()
    if case == "truncated":
        whole = model.SerializeToString()
        return whole[:len(whole) // 2]
    if case == "huge declared size":
        del model.graph.initializer[1].int32_data[:]
        model.graph.initializer[1].dims[:] = [2_000_000_000, 1, 1, 1]
    elif case == "cycle":
        model.graph.node[0].input[0] = "y"
    return model.SerializeToString()


def one_line_error(result, codes=(1, 2)) -> str:
    text = (result.stdout + result.stderr).strip()
    assert result.returncode in codes and "Traceback" not in text, text
    return text


def test_the_valid_model_lints_clean(tmp_path):
    (tmp_path / "m.onnx").write_bytes(_qdq_model().SerializeToString())
    assert run_cli("lint", str(tmp_path / "m.onnx")).returncode == 0


@pytest.mark.parametrize("case", ["truncated", "random bytes", "empty", "text", "huge declared size", "cycle"])
def test_the_linter_answers_a_malformed_onnx_in_one_line(tmp_path, case):
    (tmp_path / "m.onnx").write_bytes(_damaged_onnx(case))
    text = one_line_error(run_cli("lint", str(tmp_path / "m.onnx")))
    errors = [line for line in text.splitlines() if line.startswith(("ERROR", "error:"))]
    assert errors and "0 errors" not in text


@pytest.mark.parametrize("command", ["lint", "build"])
@pytest.mark.parametrize("damage, expected", [
    ("missing", "error: '{onnx}' keeps tensor 's' in 'm.data', which is not beside it: put 'm.data' in '{folder}' "
                "(ONNX reads external data from the model's folder)"),  # onnx said "ValidationError"
    ("short", "error: the external data of '{onnx}' cannot be read (External data length"),
])
def test_external_data_that_is_missing_or_short_is_named(tmp_path, command, damage, expected):
    model = _qdq_model()
    for tensor in model.graph.initializer:  # raw data, which onnx moves out (typed fields it keeps inline)
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    if damage == "missing":
        (tmp_path / "m.data").unlink()
    else:
        (tmp_path / "m.data").write_bytes((tmp_path / "m.data").read_bytes()[:5])
    text = one_line_error(run_cli(command, str(tmp_path / "m.onnx")), codes=(2,))
    assert text.startswith(expected.format(onnx=tmp_path / "m.onnx", folder=tmp_path)) and "\n" not in text, text


def _damaged_model_file(case: str, tmp_path) -> bytes:
    if case in GARBAGE:
        return GARBAGE[case]
    archive = tmp_path / "archive.pt"  # a zip that claims to be TorchScript, cut short or holding the wrong files
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("m/data.pkl", b"\x80\x04not a pickle" if case == "wrong content" else b"x" * 100_000)
    data = archive.read_bytes()
    return data[:len(data) // 3] if case == "truncated archive" else data


@pytest.mark.slow
@pytest.mark.parametrize("case", ["random bytes", "empty", "text", "truncated archive", "wrong content"])
def test_the_loader_answers_a_malformed_model_file_in_one_line(tmp_path, case):
    (tmp_path / "m.pt").write_bytes(_damaged_model_file(case, tmp_path))
    result = run_cli("convert", str(tmp_path / "m.pt"), "--input-shape", "1,1,8,8", "-o", str(tmp_path / "out"))
    text = one_line_error(result, codes=(2,))
    assert text.startswith("error: ") and "\n" not in text and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated", "strings", "wrong names", "damaged header"])
def test_the_loader_answers_a_malformed_dataset_in_one_line(tmp_path, case):
    """Datasets are read before the model file is (a text file stands in for it: never reached)."""
    path = tmp_path / "d.npz"
    if case == "strings":
        np.savez(path, x=np.array([["a", "b"]]))
    elif case == "wrong names":
        np.savez(path, inputs=np.zeros((4, 1, 8, 8), np.float32))
    else:
        np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32))
        data = path.read_bytes()
        if case == "truncated":
            path.write_bytes(data[:len(data) // 2])
        else:  # the .npy header inside, its shape cut off mid-tuple
            path.write_bytes(data.replace(b"(4, 1, 8, 8)", b"(4000000000,"))
    (tmp_path / "m.pt").write_text("never read")
    result = run_cli("convert", str(tmp_path / "m.pt"), "--dataset", str(path), "-o", str(tmp_path / "out"))
    text = one_line_error(result, codes=(2,))
    assert text.startswith("error: ") and "\n" not in text
