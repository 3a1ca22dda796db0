"""List the names a TensorRT Python binding offers, from the real wheel, without TensorRT's libraries or a GPU.

The checked-in lists `tests/trt_api/tensorrt-<version>.txt` come from this script; the fake `tensorrt` in
`tests/fake_trt/` may only define names those lists hold. Re-run it (from the project root, network needed
for the download; the wheels go to /tmp/whl-trt, never into the repository):

    .venv/bin/python tools/trt_api_names.py tensorrt-bindings==8.6.1
    .venv/bin/python tools/trt_api_names.py tensorrt-cu12-bindings==10.13.0.35
    .venv/bin/python tools/trt_api_names.py tensorrt-cu13-bindings==11.4.0.106

How: the bindings wheels hold only the pybind11 extension, which links libnvinfer, libnvonnxparser and
libnvinfer_plugin. Its only direct imports from them are a few C factory functions (createInferBuilder_INTERNAL,
getPluginRegistry, ...), everything else goes through vtables; so stub libraries under those sonames that
export these names let the extension load. Listing names calls none of them. A subprocess imports the module
with the stubs on LD_LIBRARY_PATH and walks dir() of the module and of the classes in CLASSES.
Output: one name per line, sorted; module-level names bare (`nptype`), class attributes as `Class.attr`.
The extension is built for one CPython: the download asks for this interpreter's version.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "tests" / "trt_api"
WHEELS = Path("/tmp/whl-trt")

# the classes and enums the worker touches or might (its calls, and the ones version differences hinge on);
# the engine inspector is `EngineInspector` in Python (IEngineInspector in C++)
CLASSES = ["Builder", "IBuilderConfig", "BuilderFlag", "NetworkDefinitionCreationFlag", "INetworkDefinition",
           "OnnxParser", "ParserError", "ICudaEngine", "IExecutionContext", "EngineInspector",
           "LayerInformationFormat", "ProfilingVerbosity", "MemoryPoolType", "TensorIOMode", "Runtime",
           "IHostMemory", "ITimingCache", "IOptimizationProfile", "IProfiler", "ITensor", "ILayer", "DataType",
           "Logger", "ILogger"]

# runs in the subprocess, where the stubs are on LD_LIBRARY_PATH
WALK = """
import json, sys, types
import tensorrt_bindings as trt
public = lambda names: [n for n in names if not n.startswith("_")]
names = [n for n in public(dir(trt)) if not isinstance(getattr(trt, n), types.ModuleType)]
for cls in json.loads(sys.argv[1]):
    if hasattr(trt, cls):
        names += [cls + "." + attr for attr in public(dir(getattr(trt, cls)))]
print(json.dumps({"version": trt.__version__, "names": sorted(set(names))}))
"""


def download(spec: str) -> Path:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    WHEELS.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--python-version", python, "--platform", "manylinux_2_28_x86_64",
                           "--platform", "manylinux_2_17_x86_64", "-d", str(WHEELS), spec],
                          capture_output=True, text=True, check=True)
    saved = re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", done.stdout)
    return Path(saved[-1])


def trt_imports(extension: Path) -> dict[str, list[str]]:
    """The functions the extension imports unversioned from TensorRT's libraries, for each library it needs:
    every one gets them all (the dynamic linker takes each from whichever stub comes first)."""
    dump = subprocess.run(["objdump", "-p", "-T", str(extension)], capture_output=True, text=True,
                          check=True).stdout
    needed = re.findall(r"NEEDED\s+(libnv\S+)", dump)
    # "DF *UND* 0 name": a strong, unversioned function import; Python's C API comes from the interpreter
    functions = sorted({m for m in re.findall(r"^\S+\s+DF \*UND\*\s+\S+\s+(\w+)$", dump, re.M)
                        if not m.startswith(("Py", "_Py"))})
    return {soname: functions for soname in needed}


def make_stubs(libraries: dict[str, list[str]], out: Path) -> None:
    for soname, functions in libraries.items():
        source = out / f"{soname}.c"
        source.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in functions))
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out / soname), f"-Wl,-soname,{soname}", str(source)],
                       check=True)


def names_in(wheel: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="trt-api-") as work:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(work)
        make_stubs(trt_imports(Path(work) / "tensorrt_bindings" / "tensorrt.so"), Path(work))
        env = {**os.environ, "LD_LIBRARY_PATH": work, "PYTHONPATH": work}
        done = subprocess.run([sys.executable, "-c", WALK, json.dumps(CLASSES)], capture_output=True, text=True,
                              env=env, cwd=work, check=True)
        return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="a bindings requirement (tensorrt-cu13-bindings==11.4.0.106) or a .whl path")
    args = parser.parse_args()
    wheel = Path(args.spec) if args.spec.endswith(".whl") else download(args.spec)
    found = names_in(wheel)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"tensorrt-{found['version']}.txt"
    out.write_text("".join(name + "\n" for name in found["names"]))
    print(f"{wheel.name}: {len(found['names'])} names -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
