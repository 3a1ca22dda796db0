"""The TensorRT worker protocol, its routes and its error paths, on CPU with a stand-in `tensorrt` package that
emulates TensorRT 8.6, 10.13 or 11.4 (tests/fake_trt, built from the real bindings' names in tests/trt_api)."""
import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from qdq_bridge.trt.engine import (BuildSettings, TensorRTSession, TensorRTUnavailable, TensorRTWorker, as_torch_module,
                                   build_engine, summarize_layers)
from qdq_bridge.errors import BridgeError
from qdq_bridge.graph import passes
from qdq_bridge.trt.divergence import LOCATOR_BUILDS_PER_HALVING
from qdq_bridge.trt.divergence import quantized_tensors
from qdq_bridge.trt.trt_protocol import CUDA_ENV

from helpers import FAKE_TRT, TRT_API, graphs, run_cli

API_LISTS = {"8.6": "tensorrt-8.6.1.txt", "10.13": "tensorrt-10.13.0.35.txt", "11.4": "tensorrt-11.4.0.106.txt"}


class Fake:
    """A worker on the fake tensorrt of one API surface, and the calls that fake recorded."""

    def __init__(self, record: Path):
        self.worker, self.record = TensorRTWorker(sys.executable, timeout_s=60), record

    def calls(self, name: str) -> list:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [call for call in map(json.loads, lines) if call["call"] == name]

    def flags_set(self) -> list:
        return [call["flag"] for call in self.calls("set_flag")]


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    def use(mode: str = "ok", api: str = "8.6") -> Fake:
        monkeypatch.setenv("PYTHONPATH", str(FAKE_TRT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        monkeypatch.setenv("FAKE_TRT_MODE", mode)
        monkeypatch.setenv("FAKE_TRT_API", api)
        monkeypatch.setenv("FAKE_TRT_RECORD", str(tmp_path / f"calls-{api}.jsonl"))
        monkeypatch.setenv(CUDA_ENV, "fake_cuda:Cuda")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the stand-in's timing caches stay here
        return Fake(tmp_path / f"calls-{api}.jsonl")
    return use


def tiny_onnx(path: Path, io_type: int = TensorProto.FLOAT) -> Path:
    """x [N,1,4,4] -> Conv -> conv -> Relu -> relu -> Flatten -> flat -> MatMul -> logits [N,3]; the fake
    parser reads only names, shapes and I/O types."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], name="/conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"], name="/relu/Relu"),
             helper.make_node("Flatten", ["relu"], ["flat"], name="/flat/Flatten"),
             helper.make_node("MatMul", ["flat", "m"], ["logits"], name="/fc/MatMul")]
    weights = [helper.make_tensor("w", io_type, [2, 1, 3, 3], [0.1] * 18),
               helper.make_tensor("m", io_type, [32, 3], [0.01] * 96)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", io_type, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", io_type, ["N", 3])], weights)
    onnx.save(helper.make_model(graph), str(path))
    return path


def fake_logits(x: np.ndarray, output_index: int = 0) -> np.ndarray:
    """What the fake engine computes for an output: (index + 1) times each sample's input sum."""
    return x.reshape(len(x), -1).astype(np.float64).sum(axis=1) * (output_index + 1)


# --- the fake against the real bindings' names ------------------------------------------------------------------

FAKE_NAMES = """
import json, types, tensorrt as trt
names = []
for name, value in vars(trt).items():
    if name.startswith("_") or isinstance(value, types.ModuleType):
        continue
    names.append(name)
    for cls in getattr(value, "__mro__", []):
        if cls.__module__ == "tensorrt":  # what the fake defines, not what Python's bytes or enum bring
            names += [name + "." + attr for attr in vars(cls) if not attr.startswith("_")]
print(json.dumps(names))
"""


@pytest.mark.parametrize("api", sorted(API_LISTS))
def test_fake_defines_only_names_the_real_tensorrt_has(api):
    env = {**os.environ, "PYTHONPATH": str(FAKE_TRT), "FAKE_TRT_API": api}
    done = subprocess.run([sys.executable, "-c", FAKE_NAMES], env=env, capture_output=True, text=True, check=True)
    real = set((TRT_API / API_LISTS[api]).read_text().split())
    assert sorted(set(json.loads(done.stdout)) - real) == []


# --- probe --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("api, version, expected, typings, fast", [
    ("8.6", "8.6.1", {"explicit_batch_flag": True, "strongly_typed": False, "int8_flag": True, "fp16_flag": True},
     ["weak"], True),
    ("10.13", "10.13.0.35", {"explicit_batch_flag": True, "strongly_typed": True, "int8_flag": True,
                             "fp16_flag": True}, ["strong", "weak"], True),
    ("11.4", "11.4.0.106", {"explicit_batch_flag": False, "strongly_typed": True, "int8_flag": False,
                            "fp16_flag": False}, ["strong"], None),
])
def test_probe_reports_features_typings_and_fast_precisions_where_tensorrt_says(fake_trt, api, version, expected,
                                                                                typings, fast):
    result = fake_trt(api=api).worker.probe()
    assert result["features"] == {"version": version, **expected, "engine_inspector": True,
                                  "int8_calibrator": api != "11.4"}
    assert result["typings"] == typings
    assert result["fast_int8"] is fast and result["fast_fp16"] is fast


# --- build routes -------------------------------------------------------------------------------------------------

ROUTES = [  # api, typing, precision -> typing, builder flags, precision source, network creation flags
    ("8.6", "auto", "int8", "weak", ["INT8", "FP16"], "builder flags", ["EXPLICIT_BATCH"]),
    ("8.6", "weak", "fp16", "weak", ["FP16"], "builder flags", ["EXPLICIT_BATCH"]),
    ("8.6", "auto", "fp32", "weak", [], "builder flags", ["EXPLICIT_BATCH"]),
    ("10.13", "auto", "int8", "strong", [], "onnx", ["EXPLICIT_BATCH", "STRONGLY_TYPED"]),
    ("10.13", "weak", "int8", "weak", ["INT8", "FP16"], "builder flags", ["EXPLICIT_BATCH"]),
    ("11.4", "auto", "int8", "strong", [], "onnx", []),
    ("11.4", "strong", "fp16", "strong", [], "onnx", []),
    ("11.4", "auto", "fp32", "strong", [], "onnx", []),
]


@pytest.mark.parametrize("api, typing, precision, route_typing, flags, source, network_flags", ROUTES)
def test_build_route_sets_exactly_the_flags_it_reports(fake_trt, tmp_path, api, typing, precision, route_typing,
                                                       flags, source, network_flags):
    fake = fake_trt(api=api)
    model = tiny_onnx(tmp_path / "m.onnx")
    result = fake.worker.build(model, tmp_path / "m.engine", BuildSettings(precision=precision, typing=typing))
    assert (result["typing"], result["flags"], result["precision_source"]) == (route_typing, flags, source)
    assert result["network_flags"] == network_flags and result["engine_bytes"] > 0
    assert fake.flags_set() == flags  # on a strong route, and on all of 11.4: no precision flag at all
    assert [call["flags"] for call in fake.calls("create_network")] == [network_flags]
    [parsed] = fake.calls("parse")
    assert Path(parsed["onnx"]).read_bytes() == model.read_bytes()
    assert (tmp_path / "m.engine").stat().st_size == result["engine_bytes"]


@pytest.mark.slow
def test_build_on_11_4_is_strongly_typed_without_precision_flags(fake_trt, tmp_path):
    fake = fake_trt(api="11.4")
    result = fake.worker.build(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", BuildSettings())
    assert result["typing"] == "strong" and result["precision_source"] == "onnx"
    assert result["flags"] == [] and fake.calls("set_flag") == []
    assert fake.calls("create_network") == [{"call": "create_network", "flags": []}]


@pytest.mark.parametrize("api, typing, message", [
    ("11.4", "weak", r"TensorRT 11\.4\.0\.106 has no precision builder flags .* ask for typing 'strong' or 'auto'"),
    ("8.6", "strong", r"TensorRT 8\.6\.1 has no strongly typed networks .* ask for typing 'weak' or 'auto'"),
    ("10.13", "loose", r"unknown typing 'loose': ask for 'auto', 'strong' or 'weak'"),
])
def test_build_refuses_a_typing_this_tensorrt_lacks_and_says_what_to_ask(fake_trt, tmp_path, api, typing, message):
    fake = fake_trt(api=api)
    with pytest.raises(BridgeError, match=message):
        fake.worker.build(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", BuildSettings(typing=typing))
    assert fake.calls("create_network") == [] and not (tmp_path / "m.engine").exists()


@pytest.mark.slow
def test_mark_outputs_adds_engine_outputs(fake_trt, tmp_path):
    fake = fake_trt(api="11.4")
    settings = BuildSettings(mark_outputs=["relu", "logits", "absent"])  # already an output, and no such tensor
    fake.worker.build(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", settings)
    assert [call["tensor"] for call in fake.calls("mark_output")] == ["relu"]
    x = np.ones((2, 1, 4, 4), np.float32)
    outputs = fake.worker.infer(tmp_path / "m.engine", x)
    assert list(outputs) == ["logits", "relu"]
    np.testing.assert_allclose(outputs["relu"][:, 0], fake_logits(x, 1))


# --- implicit INT8: TensorRT's own calibration of a float network ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("api", ["8.6", "10.13"])
def test_implicit_int8_feeds_the_entropy_calibrator_through_device_memory_and_keeps_its_cache(fake_trt, tmp_path,
                                                                                              api):
    fake = fake_trt(api=api)
    x = np.random.default_rng(0).standard_normal((10, 1, 4, 4)).astype(np.float32)
    np.save(tmp_path / "calibration.npy", x)
    cache = tmp_path / "calibration.cache"
    settings = BuildSettings(precision="int8", typing="weak", calibration_data=str(tmp_path / "calibration.npy"),
                             calibration_batch=4, calibration_cache=str(cache))
    model = tiny_onnx(tmp_path / "m.onnx")
    result = fake.worker.build(model, tmp_path / "m.engine", settings)
    assert result["flags"] == ["INT8", "FP16"]
    assert result["calibration"] == {"batches": 2, "batch_size": 4, "from_cache": False}  # 10 inputs: 4 + 4
    [calibrated] = fake.calls("calibrate")
    assert calibrated["batches"] == 2 and calibrated["input_sum"] == pytest.approx(float(x[:8].sum()), rel=1e-5)
    assert fake.calls("set_shape")[-1]["shapes"] == [[4, 1, 4, 4]] * 3 and fake.calls("set_calibration_profile")
    assert cache.read_bytes() == b"fake calibration cache"
    again = fake.worker.build(model, tmp_path / "m2.engine", settings)
    assert again["calibration"] == {"batches": 0, "batch_size": 4, "from_cache": True}


@pytest.mark.slow
@pytest.mark.parametrize("api, typing", [("11.4", "auto"), ("10.13", "auto")])
def test_implicit_int8_is_refused_without_the_int8_flag_and_calibrator(fake_trt, tmp_path, api, typing):
    """11.4 has neither; 10.13's auto build is strongly typed, which takes no calibrator."""
    fake = fake_trt(api=api)
    np.save(tmp_path / "calibration.npy", np.zeros((4, 1, 4, 4), np.float32))
    settings = BuildSettings(precision="int8", typing=typing, calibration_data=str(tmp_path / "calibration.npy"))
    with pytest.raises(BridgeError, match=r"offers no implicit INT8 calibration here"):
        fake.worker.build(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", settings)
    assert fake.calls("calibrate") == [] and not (tmp_path / "m.engine").exists()


# --- build, infer, benchmark end to end ---------------------------------------------------------------------------

@pytest.mark.parametrize("api", sorted(API_LISTS))
def test_build_infer_benchmark_end_to_end(fake_trt, tmp_path, api):
    fake = fake_trt(api=api)
    engine, layers = tmp_path / "m.engine", tmp_path / "m.layers.json"
    settings = BuildSettings(min_batch=1, opt_batch=4, max_batch=8, timing_cache=str(tmp_path / "timing.cache"),
                             optimization_level=1)
    built = fake.worker.build(tiny_onnx(tmp_path / "m.onnx"), engine, settings, layers)
    assert fake.calls("builder_optimization_level") == [{"call": "builder_optimization_level", "level": 1}]
    assert built["optimization_level"] == 1
    assert fake.calls("set_shape") == [{"call": "set_shape", "input": "x",
                                        "shapes": [[1, 1, 4, 4], [4, 1, 4, 4], [8, 1, 4, 4]]}]
    assert (tmp_path / "timing.cache").exists()
    summary = summarize_layers(json.loads(layers.read_text()))  # this TensorRT's inspector schema
    assert summary["conv_gemm_layers"] == 2 and summary["conv_gemm_not_int8"] == []
    assert summary["io_tensors"] == ["x", "logits"]

    x = np.random.default_rng(0).standard_normal((5, 1, 4, 4)).astype(np.float32)
    logits = fake.worker.infer(engine, x, batch_size=2)["logits"]  # in chunks of 2, 2 and 1
    np.testing.assert_allclose(logits, np.repeat(fake_logits(x)[:, None], 3, axis=1), rtol=1e-5)

    result = fake.worker.benchmark(engine, [1, 4], warmup=2, runs=5, profile_batch=2)
    for timing in result["timings"]:
        for mode in ("enqueue", "cuda_graph"):
            assert timing[mode]["median_ms"] == 0.25  # the fake CUDA's tick
            assert timing[mode]["throughput_per_s"] == timing["batch"] * 4000
        # by the host's clock: copies alone, and execution with them
        assert 0 < timing["copies"]["median_ms"] and "throughput_per_s" not in timing["copies"]
        assert timing["enqueue_with_copies"]["throughput_per_s"] == pytest.approx(
            timing["batch"] * 1000 / timing["enqueue_with_copies"]["median_ms"])
    assert [layer["name"] for layer in result["layer_profile"]["layers"]] == [
        "/conv/Conv", "/relu/Relu", "/flat/Flatten", "/fc/MatMul"]

    # a benchmark that compares engines of the same I/O (peers.py) leaves the host copies out
    without_copies = fake.worker.benchmark(engine, [4], warmup=2, runs=5, copies=False)["timings"][0]
    assert set(without_copies) == {"batch", "runs", "enqueue", "cuda_graph"}


# --- the session: one worker process for many batches ------------------------------------------------------------

def tiny_engine(fake: Fake, tmp_path: Path, max_batch: int = 8) -> Path:
    settings = BuildSettings(min_batch=1, opt_batch=4, max_batch=max_batch)
    fake.worker.build(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", settings)
    return tmp_path / "m.engine"


@pytest.mark.parametrize("api", sorted(API_LISTS))
def test_a_session_runs_every_batch_in_one_process_and_ends_it(fake_trt, tmp_path, api):
    """Batches of any size up to the session's run in one worker process, through its shared files; the
    session's batch size is capped by the engine profile's largest; closing ends the process and removes the
    files."""
    fake = fake_trt(api=api)
    engine, rng = tiny_engine(fake, tmp_path), np.random.default_rng(0)
    with TensorRTSession(engine, batch_size=64, worker=fake.worker) as session:
        assert session.batch_size == 8 and session.output_names == ["logits"]
        folder, process = Path(session._folder.name), session._process
        for count in (1, 8, 3, 19):  # 19: chunks of 8, 8 and 3
            x = rng.standard_normal((count, 1, 4, 4)).astype(np.float32)
            np.testing.assert_allclose(session.run(x)["logits"], np.repeat(fake_logits(x)[:, None], 3, axis=1),
                                       rtol=1e-5)
        assert {p.name for p in folder.iterdir()} == {"0.0.bin", "0.1.bin", "1.0.bin", "1.1.bin"}  # 2 slots
    assert process.poll() is not None and not folder.exists()
    runs = fake.calls("execute")
    assert [run["batch"] for run in runs] == [1, 8, 3, 8, 8, 3] and len({run["pid"] for run in runs}) == 1
    # slot 0's first full batch ran plainly and was captured; its next full batch replayed the graph; slot 1's
    # first full batch (the 19's second) ran plainly
    assert [run["graph"] for run in runs] == [False, False, False, True, False, False]


def test_a_session_keeps_one_batch_in_flight_per_slot_and_replays_each_slots_graph(fake_trt, tmp_path):
    """Batch k+1 is sent before batch k's answer comes (two slots: two batches in flight), every full batch after
    a slot's first replays that slot's graph, with that slot's buffers: the outputs are every sample's own."""
    fake = fake_trt()
    engine, rng = tiny_engine(fake, tmp_path), np.random.default_rng(1)
    with TensorRTSession(engine, batch_size=8, worker=fake.worker) as session:
        pipe = []
        send, receive = session._send, session._receive
        session._send = lambda data, step: (pipe.append("send"), send(data, step))[1]
        session._receive = lambda size, step: (pipe.append("answer"), receive(size, step))[1]
        x = rng.standard_normal((45, 1, 4, 4)).astype(np.float32)  # 5 full batches and one of 5
        np.testing.assert_allclose(session.run(x)["logits"], np.repeat(fake_logits(x)[:, None], 3, axis=1),
                                   rtol=1e-5)
        assert pipe == ["send", "send"] + ["answer", "send"] * 4 + ["answer", "answer"]
        assert session.run(x[:0])["logits"].shape == (0, 3)  # nothing to run: no batch is sent
    runs = fake.calls("execute")
    assert [(run["batch"], run["graph"]) for run in runs] == [(8, False), (8, False), (8, True), (8, True),
                                                              (8, True), (5, False)]
    fake = fake_trt()
    with TensorRTSession(engine, batch_size=8, worker=fake.worker, cuda_graphs=False) as session:
        np.testing.assert_allclose(session.run(x)["logits"][:, 0], fake_logits(x), rtol=1e-5)
    assert not any(run["graph"] for run in fake.calls("execute")[6:])


@pytest.mark.slow
def test_a_session_whose_worker_is_killed_mid_batch_ends_that_call_only(fake_trt, tmp_path):
    """The worker dies (SIGKILL) while a batch is on it: that run raises one line and removes the session's
    files; the caller's process goes on, and a new session on the same engine serves."""
    fake = fake_trt(mode="run-hang")  # the third execution never returns: the batch is on the worker for good
    engine = tiny_engine(fake, tmp_path)
    session = TensorRTSession(engine, batch_size=2, worker=fake.worker)
    x = np.ones((6, 1, 4, 4), np.float32)
    killer = threading.Timer(1.0, os.kill, (session._process.pid, signal.SIGKILL))
    killer.start()
    with pytest.raises(BridgeError, match=r"^TensorRT session crashed with signal 9 at its run \(log: ") as error:
        session.run(x)
    killer.join()
    assert "\n" not in str(error.value) and not Path(session._folder.name).exists()
    with TensorRTSession(engine, batch_size=2, worker=fake_trt().worker) as again:
        np.testing.assert_allclose(again.run(x)["logits"][:, 0], fake_logits(x), rtol=1e-5)


@pytest.mark.slow
def test_as_torch_module_keeps_one_session_across_calls(fake_trt, tmp_path):
    torch = pytest.importorskip("torch")
    fake = fake_trt()
    module = as_torch_module(tiny_engine(fake, tmp_path), fake.worker, batch_size=4)
    x = torch.randn(6, 1, 4, 4)
    for batch in (x[:1], x[:4], x):  # the last in chunks of 4 and 2
        expected = np.repeat(fake_logits(batch.numpy())[:, None], 3, axis=1)
        np.testing.assert_allclose(module(batch).numpy(), expected, rtol=1e-5)
    process = module.session._process
    module.close()
    assert process.poll() is not None and len({run["pid"] for run in fake.calls("execute")}) == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode, message", [
    ("run-crash", r"TensorRT session crashed with signal 11 at its run \(log: "),
    ("run-hang", r"TensorRT session timed out after 3 s at its run"),
    ("run-fails", r"TensorRT session run failed: RuntimeError: cuGraphLaunch failed with CUDA error 719")])
def test_a_session_whose_worker_crashes_hangs_or_fails_raises_one_line(fake_trt, tmp_path, mode, message):
    """The third run goes wrong: a one-line BridgeError; a crashed or hung worker is gone afterwards."""
    fake = fake_trt(mode=mode)
    engine = tiny_engine(fake, tmp_path)
    fake.worker.timeout_s = 3
    session = TensorRTSession(engine, batch_size=2, worker=fake.worker)
    x = np.ones((2, 1, 4, 4), np.float32)
    session.run(x), session.run(x)
    with pytest.raises(BridgeError, match=message) as error:
        session.run(x)
    assert "\n" not in str(error.value)
    if mode != "run-fails":
        assert session._process.poll() is not None and not Path(session._folder.name).exists()
    session.close()
    assert session._process.poll() is not None


@pytest.mark.slow
def test_a_session_on_an_engine_of_another_tensorrt_says_so(fake_trt, tmp_path):
    engine = tiny_engine(fake_trt(api="8.6"), tmp_path)
    with pytest.raises(BridgeError, match="could not start: TensorRT could not deserialize the engine"):
        TensorRTSession(engine, worker=fake_trt(api="11.4").worker)


@pytest.mark.slow
def test_fp16_onnx_makes_an_fp16_engine_on_11_4(fake_trt, tmp_path):
    """No FP16 flag on 11.x: an fp16 engine comes from an ONNX that carries fp16; infer feeds it fp16."""
    fake = fake_trt(api="11.4")
    model = tiny_onnx(tmp_path / "m16.onnx", TensorProto.FLOAT16)
    result = fake.worker.build(model, tmp_path / "m16.engine", BuildSettings(precision="fp16"))
    assert (result["typing"], result["flags"], result["precision_source"]) == ("strong", [], "onnx")
    [parsed] = fake.calls("parse")
    assert onnx.load(parsed["onnx"]).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = np.full((3, 1, 4, 4), 0.5, np.float32)
    logits = fake.worker.infer(tmp_path / "m16.engine", x)["logits"]
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits[:, 0], fake_logits(x))


@pytest.mark.slow
def test_engine_of_another_tensorrt_is_reported_not_run(fake_trt, tmp_path):
    fake_trt(api="8.6").worker.build(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", BuildSettings())
    with pytest.raises(BridgeError, match="could not deserialize the engine"):
        fake_trt(api="11.4").worker.infer(tmp_path / "m.engine", np.ones((1, 1, 4, 4), np.float32))


# --- failures of the worker process -------------------------------------------------------------------------------

def test_missing_tensorrt_says_how_to_enable_it():
    with pytest.raises(TensorRTUnavailable, match=r"no TensorRT under .*No module named 'tensorrt'.*"
                                                  r"set QDQ_BRIDGE_TRT_PYTHON \(or --trt-python\)"):
        TensorRTWorker(sys.executable).probe()


def test_missing_interpreter():
    with pytest.raises(TensorRTUnavailable, match="TensorRT interpreter '/nonexistent/python' does not exist"):
        TensorRTWorker("/nonexistent/python").probe()


def test_worker_crash_is_an_error_not_a_dead_main_process(fake_trt):
    with pytest.raises(BridgeError, match=r"TensorRT worker 'probe' crashed with signal 11"):
        fake_trt("crash").worker.probe()


def test_one_worker_process_takes_every_call_until_closed_and_a_crash_ends_only_it(fake_trt, monkeypatch, tmp_path):
    fake = fake_trt()
    fake.worker.probe()
    fake.worker.build(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", BuildSettings())
    fake.worker.build(tmp_path / "m.onnx", tmp_path / "m2.engine", BuildSettings())
    fake.worker.close()
    fake.worker.probe()  # a new process after close
    first, *rest, after_close = [call["pid"] for call in fake.calls("builder")]
    assert rest == [first, first] and after_close != first

    monkeypatch.setenv("FAKE_TRT_MODE", "crash")
    fake.worker.close()
    with pytest.raises(BridgeError, match="crashed with signal 11"):
        fake.worker.probe()
    monkeypatch.setenv("FAKE_TRT_MODE", "ok")
    assert fake.worker.probe()["typings"] == ["weak"]  # the next call starts a sound process


def test_worker_hang_times_out(fake_trt):
    worker = fake_trt("hang").worker
    worker.timeout_s = 1
    with pytest.raises(BridgeError, match=r"TensorRT worker 'probe' timed out after 1 s.*raise --trt-timeout"):
        worker.probe()


def test_convert_without_tensorrt_finishes_cpu_stages_and_says_how(example_dir, tmp_path):
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--random-inputs", "0", "-o", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["tensorrt"] == {} and report["ok"]
    assert any("no TensorRT engine built" in n and "QDQ_BRIDGE_TRT_PYTHON" in n for n in report["notes"])
    assert "No engine was built (see the notes)." in (tmp_path / "o" / "report.md").read_text()


def test_convert_with_engine_required_fails_cleanly(example_dir, tmp_path):
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--engine", "require", "-o", str(tmp_path / "o"))
    assert result.returncode == 2 and "error: no TensorRT under" in result.stderr
    assert not (tmp_path / "o").exists()


# --- layer summary, both inspector schemas ------------------------------------------------------------------------

def test_layer_summary_counts_precisions_and_fusions():
    report = {"Layers": [
        {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
        {"Name": "fc", "LayerType": "CaskGemmConvolution", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "conv2", "LayerType": "CaskConvolution", "Inputs": [{"Format/Datatype": "N/A due to dynamic shapes"}],
         "TacticName": "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32"},
        {"Name": "PWN(/stage1/Add, /stage1/Relu)", "LayerType": "PointWiseV2", "Inputs": []},
        {"Name": "/stage2/conv2/Conv + /stage2/Add_1 + /stage2/Relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Format/Datatype": "Int8"}]},
        {"Name": "PWN(/head/Mul)", "LayerType": "PointWiseV2", "Inputs": []},
        {"Name": "PWN(node_add_95, node_relu_12)", "LayerType": "PointWiseV2", "Inputs": []},  # dynamo's names
        {"Name": "node_conv2d_3 + node_add_7 + node_relu_5", "LayerType": "CaskConvolution",
         "Inputs": [{"Format/Datatype": "Int8"}]},
        {"Name": "/conv1/Conv + /conv1/Relu + /maxpool/MaxPool", "LayerType": "CaskConvActPool",
         "ConvWeights": {"Type": "Int8", "Count": 9408}, "Inputs": [{"Format/Datatype": "N/A due to dynamic shapes"}]},
        {"Name": "/fc/Gemm", "LayerType": "CaskConvolution", "Inputs": [],  # int8 in, float out
         "TacticName": "sm90_xmma_fprop_implicit_gemm_i8f32_i8i32_f32_nchw"},
        {"Name": "reformat", "LayerType": "Reformat", "Inputs": []},
    ], "Bindings": ["input", "logits"]}
    summary = summarize_layers(report)
    assert summary["conv_gemm_layers"] == 7 and summary["conv_gemm_not_int8"] == ["fc"]
    assert summary["pointwise_layers"] == ["PWN(/stage1/Add, /stage1/Relu)", "PWN(/head/Mul)",
                                           "PWN(node_add_95, node_relu_12)"]
    assert summary["reformat_layers"] == ["reformat"]
    # the fused ones are not
    assert summary["standalone_add_layers"] == ["PWN(/stage1/Add, /stage1/Relu)", "PWN(node_add_95, node_relu_12)"]
    assert summary["io_tensors"] == ["input", "logits"]


def test_layer_summary_reads_the_tensorrt_11_schema():
    """11.x: "I/O Tensors" objects instead of "Bindings" names (NVIDIA's 10.x-to-11.x IEngineInspector migration
    page); layer tensors with separate "Format" and "Datatype" instead of "Format/Datatype" (as Polygraphy reads
    them)."""
    report = {"Layers": [
        {"Name": "/conv1/Conv + /conv1/Relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "x", "Dimensions": [-1, 1, 8, 8], "Format": "Row major linear format (kLINEAR)",
                     "Datatype": "Int8"}]},
        {"Name": "/fc/Gemm", "LayerType": "CaskGemmConvolution",
         "Inputs": [{"Name": "flat", "Format": "Row major linear format (kLINEAR)", "Datatype": "Float"}]},
        {"Name": "PWN(/stage1/Add, /stage1/Relu)", "LayerType": "PointWiseV2", "Inputs": []},
    ], "I/O Tensors": [
        {"Name": "x", "IOMode": "Input", "DataType": "Float", "Dimensions": [-1, 1, 8, 8], "Location": "Device",
         "IsShapeInferenceIO": False,
         "ProfileInfo": [{"MinShape": [1, 1, 8, 8], "OptShape": [32, 1, 8, 8], "MaxShape": [256, 1, 8, 8],
                          "Format": "Row major linear FP32 format (kLINEAR)"}]},
        {"Name": "logits", "IOMode": "Output", "DataType": "Float", "Dimensions": [-1, 10], "Location": "Device",
         "IsShapeInferenceIO": False}]}
    summary = summarize_layers(report)
    assert summary["conv_gemm_layers"] == 2 and summary["conv_gemm_not_int8"] == ["/fc/Gemm"]
    assert summary["standalone_add_layers"] == ["PWN(/stage1/Add, /stage1/Relu)"]
    assert summary["io_tensors"] == ["x", "logits"]


# --- convert with a TensorRT stand-in: the route, and engine-stage failures that keep the CPU results ---------

def test_convert_on_11_4_takes_precision_from_the_onnx_with_no_precision_flag(fake_trt, example_dir, tmp_path):
    """The example is INT8 compute throughout, so its engine is built from the Q/DQ ONNX itself; the FP16
    comparison engine from the float twin's fp16 copy."""
    fake = fake_trt(api="11.4")
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--engine", "require", "--random-inputs", "0",
                     "--compare-precisions", "fp16", "-o", str(tmp_path / "o"))
    assert result.returncode == 1, result.stderr  # the stand-in's logits are input sums: parity fails, as it should
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    trt = report["tensorrt"]
    assert (trt["build"]["typing"], trt["build"]["flags"], trt["build"]["precision_source"]) == ("strong", [], "onnx")
    assert trt["engine_onnx"] == "resnet_q.qdq.onnx" and fake.calls("set_flag") == []
    conversion = trt["mixed_precision"]["resnet_q.qdq.onnx"]
    assert conversion["fp16_nodes"] == 0 and conversion["int8_nodes"] > 0 and conversion["casts_added"] == 0
    assert not (tmp_path / "o" / "resnet_q.qdq.fp16.onnx").exists()
    parsed = [onnx.load(call["onnx"]) for call in fake.calls("parse")]
    assert len(parsed) == 2 + trt["divergence"]["builds"]  # INT8, FP16 twin, then the divergence locator's builds
    assert {"tensorrt", "divergence"} <= report["stage_seconds"].keys()  # the locator's time apart from the build's
    assert parsed[0].SerializeToString() == onnx.load(str(tmp_path / "o" / "resnet_q.qdq.onnx")).SerializeToString()
    twin = parsed[1]
    assert twin.SerializeToString() == onnx.load(str(tmp_path / "o" / "resnet_q.float.fp16.onnx")).SerializeToString()
    types = {v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(twin).graph.value_info}
    assert TensorProto.FLOAT16 in types and twin.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert trt["build_fp16"]["flags"] == [] and any(r["candidate"] == "tensorrt-fp16" for r in report["parity"])


def test_convert_on_8_6_takes_fp16_from_the_flag_on_the_float32_onnx(fake_trt, example_dir, tmp_path):
    """Weakly typed TensorRT gets the float32 Q/DQ file and the FP16 flag (it chooses fp16 per layer); no fp16
    copy is made."""
    fake = fake_trt(api="8.6")
    run_cli("convert", str(example_dir / "resnet_q.pt"), "--random-inputs", "0", "-o", str(tmp_path / "o"))
    trt = json.loads((tmp_path / "o" / "report.json").read_text())["tensorrt"]
    assert trt["engine_onnx"] == "resnet_q.qdq.onnx" and trt["build"]["flags"] == ["INT8", "FP16"]
    assert fake.flags_set()[:2] == ["INT8", "FP16"] and not (tmp_path / "o" / "resnet_q.qdq.fp16.onnx").exists()


def test_locator_isolates_tensors_tensorrt_cannot_expose_within_its_budget(fake_trt, example_dir, tmp_path,
                                                                           monkeypatch):
    """Two quantized activations the stand-in refuses to mark as outputs: every group holding one fails to build
    and is halved, down to the two tensors, and the scan of the others completes."""
    fake_trt()
    run_cli("convert", str(example_dir / "resnet_q.pt"), "--engine", "off", "-o", str(tmp_path / "cpu"))
    tensors = [name for name, _ in quantized_tensors(onnx.load(str(tmp_path / "cpu" / "resnet_q.qdq.onnx")))]
    refused = [tensors[3], tensors[-2]]
    monkeypatch.setenv("FAKE_TRT_UNEXPOSABLE", ",".join(refused))
    run_cli("convert", str(example_dir / "resnet_q.pt"), "--random-inputs", "0", "-o", str(tmp_path / "o"))
    divergence = json.loads((tmp_path / "o" / "report.json").read_text())["tensorrt"]["divergence"]
    assert divergence["not_exposable"] == refused and divergence["complete"] and divergence["first"] == []
    assert divergence["not_scanned"] == []
    assert divergence["builds"] <= 1 + LOCATOR_BUILDS_PER_HALVING * math.ceil(math.log2(len(tensors)))
    log = divergence["log"]  # one entry a build: the first marks every tensor and fails, single refused ones fail
    assert len(log) == divergence["builds"] and log[0]["marked"] == len(tensors) and "failed" in log[0]
    assert [e["first_tensor"] for e in log if e["marked"] == 1 and "failed" in e] == refused


@pytest.mark.parametrize("mode, step", [("crash", "probe"), ("build-fails", "build of resnet_q.int8.engine")])
def test_engine_stage_failure_keeps_the_cpu_results_and_exits_1(fake_trt, example_dir, tmp_path, mode, step):
    fake_trt(mode=mode)
    out = tmp_path / "o"
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "--random-inputs", "0", "-o", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    assert {"resnet_q.qdq.onnx", "report.json", "report.md"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["tensorrt"]["failed"]["step"] == step
    assert report["failed"][-1].startswith(f"TensorRT: the {step} failed (")
    assert report["parity"][0]["candidate"] == "onnxruntime" and report["parity"][0]["agreement"] == 1.0
    assert f"**the {step} failed**" in (out / "report.md").read_text()
    assert f"FAIL: TensorRT: the {step} failed" in " ".join(result.stdout.split())
    reduce = [note for note in report["notes"] if "polygraphy debug reduce" in note]
    if mode == "build-fails":  # how to find the nodes TensorRT fails on, with `build` as polygraphy's check
        assert "reduce resnet_q.qdq.onnx -o reduced.onnx --model-input-shapes input:[1,1,32,32]" in reduce[0]
        assert "python -m qdq_bridge build resnet_q.qdq.onnx --trt-log build.log;" in reduce[0]
        assert reduce[0].endswith("--check python -m qdq_bridge build polygraphy_debug.onnx")
    else:
        assert not reduce


# --- the build command ----------------------------------------------------------------------------------------------

def test_build_command_writes_the_engine_and_its_layer_report(fake_trt, tmp_path):
    fake_trt()
    result = run_cli("build", str(tiny_onnx(tmp_path / "m.onnx")), "--builder-optimization-level", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.engine").exists() and json.loads((tmp_path / "m.layers.json").read_text())["Layers"]
    assert f"{tmp_path / 'm.engine'}: 4 layers, 2 conv/GEMM (0 not INT8), 0 standalone Add" in result.stdout


def test_builds_share_a_timing_cache_per_tensorrt_and_gpu_in_the_users_cache_folder(fake_trt, tmp_path):
    """By default (no option), so a user's second conversion reuses the first's kernel timings; a cache is valid
    for one TensorRT version on one GPU model, which name the file."""
    fake = fake_trt()
    onnx_file = tiny_onnx(tmp_path / "m.onnx")
    first, second = (fake.worker.build(onnx_file, tmp_path / f"{name}.engine", BuildSettings()) for name in "ab")
    cache = tmp_path / "cache" / "qdq_bridge" / "timing" / f"trt-{first['features']['version']}-Fake-GPU-sm_00.cache"
    assert first["timing_cache"] == {"file": str(cache), "reused": False} and cache.read_bytes()
    assert second["timing_cache"] == {"file": str(cache), "reused": True}
    off = fake.worker.build(onnx_file, tmp_path / "c.engine", BuildSettings(timing_cache_dir=None))
    assert off["timing_cache"] is None


def test_timing_cache_options_that_contradict_are_refused(fake_trt, tmp_path):
    fake_trt()
    result = run_cli("build", str(tiny_onnx(tmp_path / "m.onnx")), "--timing-cache", str(tmp_path / "t.cache"),
                     "--no-timing-cache")
    assert result.returncode == 2 and result.stderr == \
        "error: --timing-cache and --no-timing-cache contradict each other: pass one of them\n"


def test_build_command_fails_with_tensorrts_reason_in_one_line_and_writes_nothing(fake_trt, monkeypatch, tmp_path):
    """The check command of `polygraphy debug reduce` (README): exit status 1 and TensorRT's log line."""
    fake_trt()
    monkeypatch.setenv("FAKE_TRT_FAILING_OPS", "Relu")
    result = run_cli("build", str(tiny_onnx(tmp_path / "m.onnx")), "-o", str(tmp_path / "out.engine"))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "the builder returned no engine" in result.stderr and "chooseHigherPrecision" in result.stderr
    assert "[V]" not in result.stderr  # TensorRT logs warnings and errors only, unless --trt-log asks for more
    assert not list(tmp_path.glob("out*"))


def test_build_command_keeps_tensorrts_verbose_log_of_a_failed_build(fake_trt, monkeypatch, tmp_path):
    """--trt-log: the whole log at VERBOSE (each node as the parser reads it), kept when the build fails."""
    fake_trt()
    monkeypatch.setenv("FAKE_TRT_FAILING_OPS", "Relu")
    model = tiny_onnx(tmp_path / "m.onnx")
    result = run_cli("build", str(model), "--trt-log", str(tmp_path / "build.log"))
    assert result.returncode == 1
    log = (tmp_path / "build.log").read_text().splitlines()
    nodes = onnx.load(str(model)).graph.node
    assert [line for line in log if "[V] Parsing node" in line] == [
        f"[TRT] [V] Parsing node: {n.name} [{n.op_type}]" for n in nodes]
    assert "chooseHigherPrecision" in log[-1]


def test_build_command_without_tensorrt_says_how_to_enable_it(tmp_path):
    result = run_cli("build", str(tiny_onnx(tmp_path / "m.onnx")))
    assert result.returncode == 2
    assert "no TensorRT under" in result.stderr and "QDQ_BRIDGE_TRT_PYTHON" in result.stderr


@pytest.mark.parametrize("api, constrained", [("8.6", True), ("10.13", True), ("11.4", False)])
def test_grid_arithmetic_builds_float32_where_the_fp16_flag_would_choose(fake_trt, tmp_path, api, constrained):
    """An INT8 build with float ops in fp16 keeps a gate's rounding onto the 1/256 grid float32: weakly typed (8.6,
    10.13), each layer of it gets float32 precision and outputs, with PREFER_PRECISION_CONSTRAINTS; an average
    pool's rounding is left to TensorRT (constrained, TensorRT 8.6 could not build MobileNetV3); strongly typed
    (11.4) takes types from the ONNX and sets none."""
    fake = fake_trt(api=api)
    x = gs.Variable("x", np.float32, (-1, 2, 4, 4))
    nodes: list = []
    dq = graphs.q_dq(nodes, x, "in", zp=0, zp_dtype=np.int8)
    pooled = gs.Variable("pooled", np.float32)
    nodes.append(gs.Node("GlobalAveragePool", "/pool/GlobalAveragePool", inputs=[dq], outputs=[pooled]))
    gate_in = graphs.q_dq(nodes, pooled, "pooled", zp=0, zp_dtype=np.int8)
    gate = gs.Variable("gate", np.float32)
    nodes.append(gs.Node("HardSigmoid", "/gate/HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, [gate_in], [gate]))
    gated = graphs.q_dq(nodes, gate, "gate", scale=1 / 256, zp=0)
    scaled = gs.Variable("scaled", np.float32)
    nodes.append(gs.Node("Mul", "/gate/Mul", inputs=[dq, gated], outputs=[scaled]))
    logits = graphs.q_dq(nodes, scaled, "out", zp=0, zp_dtype=np.int8)
    graph = gs.Graph(nodes, [x], [logits], opset=13)
    graph = passes.average_pools_on_pytorch_grid(passes.fixed_range_outputs_on_pytorch_grid(graph))
    graph.outputs[0].name, graph.outputs[0].shape = "logits", (-1, 2, 4, 4)
    onnx.save(graphs.model(graph), str(tmp_path / "gate.onnx"))
    result = build_engine(tmp_path / "gate.onnx", tmp_path / "gate.engine", BuildSettings(typing="weak" if
                          constrained else "auto"), fake.worker).build
    # the gate's grid after the ops TensorRT runs on int8 data (HardSigmoid, Mul by 256): Round, Clip, Mul by 1/256
    grid = {n.name for n in graph.nodes if n.op in ("Round", "Clip") and n.name.startswith("/gate/")}
    grid |= {c.name for n in graph.nodes if n.op == "Clip" for c in n.outputs[0].outputs}
    assert len(grid) == 3
    if constrained:
        assert result["float32_layers"] == {"asked": 3, "set": 3} and "PREFER_PRECISION_CONSTRAINTS" in fake.flags_set()
        assert {c["layer"] for c in fake.calls("layer_precision")} == grid  # no layer of the pool's
        assert {c["dtype"] for c in fake.calls("layer_output_type")} == {"FLOAT"}
    else:
        assert result["float32_layers"] is None and fake.calls("layer_precision") == []
