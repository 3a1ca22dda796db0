"""A run owns only what it writes (issue 24): a second run into a busy output folder is refused, an interrupted
run removes its own scratch and nothing else, and SIGTERM/SIGINT end its TensorRT worker; real signals to real
runs, the folder and the process table checked afterwards."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qdq_bridge.trt.trt_protocol import CUDA_ENV

from helpers import FAKE_TRT, run_cli

SLOW = ("--random-inputs", "200000")  # parity on 200,000 inputs (0.8 GB): a minute or more, cut short by the tests


# seconds a signalled run may take to end: it ends at the next bytecode, after the torch or ONNX Runtime call it is
# in, which on a loaded 2-core machine took over 60 s once (a clean-clone suite beside other test runs)
ENDS_WITHIN = 180


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qdq_bridge", "convert", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def scratch(folder: Path) -> list[Path]:
    return list(folder.glob(".partial-*")) if folder.exists() else []


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_second_run_into_a_busy_folder_is_refused_and_an_interrupted_run_keeps_what_others_wrote(
        example_dir, tmp_path):
    """The data-loss case: the first run is interrupted after someone copied a file into its folder and a second
    run tried to write there. The second is refused at once; the first removes its scratch and nothing else."""
    shared = tmp_path / "shared"
    first = start(str(example_dir / "resnet_q.pt"), *SLOW, "-o", str(shared))
    wait_for(lambda: scratch(shared), "the first run's scratch folder")
    (shared / "notes.txt").write_text("mine")
    second = run_cli("convert", str(example_dir / "resnet_qat_q.pt"), "-o", str(shared))
    assert second.returncode == 2
    assert second.stderr.strip() == f"error: output folder '{shared}' is in use by another qdq_bridge convert: wait " \
                                    "for it to finish, or pass another --output-dir"
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=ENDS_WITHIN)
    assert first.returncode == 130
    assert stderr.strip().splitlines()[-1] == "error: interrupted by SIGINT: this run's partial files were removed"
    assert "Traceback" not in stderr
    assert sorted(p.name for p in shared.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_removes_the_runs_scratch_and_the_folder_it_made(example_dir, tmp_path, number):
    """SIGHUP (the terminal closed) killed the run where it stood and left its .partial-* folder."""
    out = tmp_path / "made" / "out"
    run = start(str(example_dir / "resnet_q.pt"), *SLOW, "-o", str(out))
    wait_for(lambda: scratch(out), "the run's scratch folder")
    run.send_signal(number)
    _, stderr = run.communicate(timeout=ENDS_WITHIN)
    assert run.returncode == 128 + number and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == \
        f"error: interrupted by {number.name}: this run's partial files were removed"
    assert not (tmp_path / "made").exists()


COMPLETE_SET = {"resnet_q.qdq.onnx", "report.json", "report.md"}


def test_an_interrupt_while_the_files_move_into_place_waits_for_the_whole_set(example_dir, tmp_path, monkeypatch):
    """SIGINT as the first file moves in (in this process, the library's run): the move finishes, then the
    interrupt is raised naming the folder that holds the complete set, not a mix of two runs' files."""
    from qdq_bridge import ConvertOptions, convert
    from qdq_bridge.errors import Interrupted

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("an earlier run's")
    move = Path.replace

    def interrupted_move(self, target):
        if self.parent.name.startswith(".partial-"):
            os.kill(os.getpid(), signal.SIGINT)
        return move(self, target)

    monkeypatch.setattr(Path, "replace", interrupted_move)
    with pytest.raises(Interrupted) as raised:
        convert(example_dir / "resnet_q.pt", out, ConvertOptions(engine="off", random_inputs=0, progress=False))
    assert (raised.value.signal_number, raised.value.files_in) == (signal.SIGINT, out)
    assert {p.name for p in out.iterdir()} == COMPLETE_SET and "an earlier run's" not in (out / "report.md").read_text()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


def test_ctrl_c_after_the_files_are_in_place_says_so(example_dir, tmp_path):
    """Ctrl-C while the verdict prints (a slow terminal, a paused pager), in a process of its own (the CLI sets
    signal handlers and logging): exit 130, and the line says the complete set is in place; it said the partial
    files were removed."""
    out = tmp_path / "out"
    program = ("import sys; from qdq_bridge import cli\n"
               "def interrupted(console, result): raise KeyboardInterrupt\n"
               "cli._print_convert = interrupted\n"
               f"sys.exit(cli.main(['convert', {str(example_dir / 'resnet_q.pt')!r}, '-o', {str(out)!r}, '--engine', "
               "'off', '--random-inputs', '0']))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.returncode == 130 and {p.name for p in out.iterdir()} == COMPLETE_SET, result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"error: interrupted by SIGINT after the run completed: its files are in '{out}'"


def test_sigterm_ends_a_hanging_tensorrt_worker_and_removes_its_files(example_dir, tmp_path):
    """The stand-in TensorRT hangs in its builder; SIGTERM to the convert ends the worker too, and no qdq-trt-*
    folder is left in the temporary folder."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(FAKE_TRT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "FAKE_TRT_MODE": "hang", CUDA_ENV: "fake_cuda:Cuda", "TMPDIR": str(temp)}
    run = start(str(example_dir / "resnet_q.pt"), "--engine", "require", "-o", str(tmp_path / "o"), env=env)
    wait_for(lambda: list(temp.glob("qdq-trt-*")) and children(run.pid), "the TensorRT worker")
    workers = children(run.pid)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=ENDS_WITHIN)
    assert run.returncode == 143 and "Traceback" not in stderr
    assert not any(alive(pid) for pid in workers)
    assert list(temp.glob("qdq-trt-*")) == [] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("attempt", range(3))
def test_two_runs_started_together_into_one_folder_end_with_one_complete_set(example_dir, tmp_path, attempt):
    """Each run either writes its whole set or is refused with one line; no crash, no lost or mixed files."""
    shared = tmp_path / "shared"
    runs = {name: start(str(example_dir / f"{name}.pt"), "--random-inputs", "0", "-o", str(shared))
            for name in ("resnet_q", "resnet_qat_q")}
    results = {name: (run.wait(timeout=300), run.stderr.read()) for name, run in runs.items()}
    passed = [name for name, (code, _) in results.items() if code == 0]
    assert passed and all(code == 2 and "is in use by another qdq_bridge convert" in stderr
                          for name, (code, stderr) in results.items() if name not in passed)
    assert not scratch(shared)
    names = sorted(p.name for p in shared.iterdir())
    assert all(f"{name}.qdq.onnx" in names for name in passed)
    assert json.loads((shared / "report.json").read_text())["model"] in {f"{name}.pt" for name in passed}


def test_an_input_the_run_would_write_over_is_refused_and_left_as_it_was(example_dir, tmp_path):
    """A model copied to report.md in its own output folder (round two, case 1): once replaced by the report and
    PASS; now refused in one line, the file untouched."""
    model = tmp_path / "report.md"
    model.write_bytes((example_dir / "resnet_q.pt").read_bytes())
    result = run_cli("convert", str(model), "-o", str(tmp_path), "--engine", "off")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (f"error: '{model}' is an input of this run, and the run would write its "
                                     f"'report.md' over it in '{tmp_path}': pass another --output-dir, or move or "
                                     "rename that file")
    assert model.read_bytes() == (example_dir / "resnet_q.pt").read_bytes() and not scratch(tmp_path)


def test_a_killed_runs_scratch_is_removed_by_the_next_run_into_the_folder(example_dir, tmp_path):
    """kill -9 leaves .partial-* behind (nothing runs after it); the next run, holding the folder's lock, removes
    it with its own."""
    out = tmp_path / "out"
    (out / ".partial-killed").mkdir(parents=True)
    (out / ".partial-killed" / "resnet_q.qdq.onnx").write_bytes(b"half")
    result = run_cli("convert", str(example_dir / "resnet_q.pt"), "-o", str(out), "--engine", "off",
                     "--random-inputs", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not scratch(out) and {p.name for p in out.iterdir()} == {"resnet_q.qdq.onnx", "report.json", "report.md"}
