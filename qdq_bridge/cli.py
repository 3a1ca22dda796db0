"""Command line: a thin layer over `qdq_bridge.pipeline.convert`, `qdq_bridge.graph.lint` and the pass registry."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .choices import (BACKEND_ORDER, ENGINE_INPUTS, ENGINE_MODES, EXPORTERS, FLOAT_PRECISIONS, OBSERVER_NAMES,
                      OPTIMIZATION_LEVELS, PLACEMENTS, PRESETS, QCONFIGS, SIGNIFICANCE, TYPINGS, default_workers)
from .data.preprocessing import Preprocessing
from .errors import BridgeError, Interrupted, readable_file
from .graph.lint import error_violations, lint_file, read_onnx, to_json
from .graph.passes import PASS_NAMES, PASSES
from .options import ConvertOptions
from .trt.engine import PYTHON_ENV, BuildSettings, TensorRTUnavailable, TensorRTWorker, build_engine

EXIT_OK, EXIT_FAILED_CHECKS, EXIT_BAD_INPUT = 0, 1, 2


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,3,224,224")
    return shape


def _size(text: str) -> tuple[int, int]:
    size = _shape(text)
    if len(size) > 2:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size like 224 or 224,224")
    return (size[0], size[-1])


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of numbers like 0.485,0.456,0.406") from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")
    return int(text)


def _assignments(items: list[str], whole: bool = False) -> dict[str, str | int]:
    """`--task OUTPUT=KIND` / `--class-axis OUTPUT=AXIS` items as {output: value}; an item without OUTPUT= applies
    to every output (key ""). ConvertOptions checks the values."""
    parsed: dict[str, str | int] = {}
    for item in items:
        name, _, value = item.rpartition("=")
        try:
            parsed[name] = int(value) if whole else value
        except ValueError:
            raise BridgeError(f"--class-axis {item} does not end in a whole number",
                              "pass --class-axis [OUTPUT=]AXIS, e.g. --class-axis -1") from None
    return parsed


def _backends(text: str) -> tuple[str, ...]:
    chosen = tuple(e for e in text.split(",") if e)
    if not chosen or any(e not in BACKEND_ORDER for e in chosen):
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of {', '.join(BACKEND_ORDER)}")
    return chosen


def _precisions(text: str) -> tuple[str, ...]:
    chosen = tuple(p for p in text.split(",") if p)
    for precision in chosen:
        if precision not in ("fp16", "fp32"):
            raise BridgeError(f"--compare-precisions takes fp16 and/or fp32, not '{precision}'",
                              "use e.g. --compare-precisions fp16,fp32")
    return chosen


def _batch_range(batches: tuple[int, ...]) -> tuple[int, ...]:
    if len(batches) != 3 or not batches[0] <= batches[1] <= batches[2]:
        raise BridgeError(f"--batch-range {','.join(map(str, batches))} is not MIN,OPT,MAX with MIN <= OPT <= MAX",
                          "use e.g. --batch-range 1,32,256")
    return batches


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line naming the problem and the fix, exit status 2 (argparse
    prints the whole usage)."""

    def error(self, message: str):
        print(f"error: {message}: see '{self.prog} --help'", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _interrupt(signal_number: int, frame) -> None:
    raise Interrupted(signal_number)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m qdq_bridge", description=(
        "Turn PyTorch eager-mode quantized models into TensorRT-legal Q/DQ ONNX and check their parity."))
    commands = parser.add_subparsers(dest="command", required=True)

    conv = commands.add_parser("convert", help="load, export, rewrite, lint and verify a quantized model",
                               description="Writes <name>.qdq.onnx, report.json and report.md into the output "
                                           "folder. Exit status: 0 ok, 1 lint errors or parity below thresholds, "
                                           "2 bad input.")
    conv.add_argument("model", help="TorchScript .pt, torch.save'd module (needs --trust-pickle) or state_dict "
                                    "(needs --arch); quantized, QAT (fake-quant) or float (needs --calibrate)")
    conv.add_argument("-o", "--output-dir", help="output folder (default: ./<model name>_qdq)")
    conv.add_argument("--input-shape", type=_shape, help="N,C,H,W of one example batch (default: from the "
                                                         "file's metadata or the first convolution, 224x224)")
    conv.add_argument("--arch", help="architecture for a state_dict: torchvision:resnet18 or package.module:factory")
    conv.add_argument("--trust-pickle", action="store_true",
                      help="allow loading a pickled module (unpickling runs code from the file)")
    conv.add_argument("--calibrate", metavar="DATA", help="quantize a float model by PTQ on this data (a DATA spec "
                                                          "as for --dataset)")
    conv.add_argument("--observer", choices=sorted(OBSERVER_NAMES), default="histogram",
                      help="activation observer for --calibrate (default: histogram)")
    conv.add_argument("--qconfig", choices=QCONFIGS, default="tensorrt",
                      help="PTQ preset for --calibrate: tensorrt (symmetric, default), PyTorch's default x86, "
                           "fbgemm or qnnpack qconfig, or torchvision's recipe for its quantized models (affine "
                           "activations)")
    conv.add_argument("--requantize-activations", action="store_true",
                      help="re-quantize activations PyTorch quantized over the full uint8 range (qnnpack-style), "
                           "which int8 at their scale cannot hold, to symmetric int8 over the same range, instead "
                           "of refusing the model; the report lists them and measures parity against PyTorch")
    conv.add_argument("--keep-float", type=lambda text: tuple(n for n in text.split(",") if n), default=(),
                      metavar="NAMES", help="with --calibrate: leave these submodules float, e.g. layer4,fc (names as "
                                            "model.named_modules() gives them); TensorRT runs them in fp16")
    conv.add_argument("--torch-backends", "--torch-engines", type=_backends, default=BACKEND_ORDER, metavar="LIST",
                      help="PyTorch quantized backends for the reference, by preference (--torch-engines: the old "
                           "spelling, deprecated): the first packs and runs the "
                           "model, the next cross-checks it and takes over where the first deviates from the "
                           f"model's integer semantics (default: {','.join(BACKEND_ORDER)}; one name: no cross-check)")
    conv.add_argument("--no-spread", action="store_true",
                      help="do not run PyTorch's second backend over the data (it shows PyTorch's own spread beside "
                           "each candidate and can excuse an agreement shortfall within it; it costs a second PyTorch "
                           "pass): every threshold then holds as given")
    conv.add_argument("--dataset", metavar="DATA", help="labelled data for parity and accuracy: 'digits', an .npz "
                                                        "with arrays x, y, imagefolder:PATH, cifar10:ROOT or "
                                                        "mnist:ROOT (default: from the file's metadata)")
    conv.add_argument("--random-inputs", type=int, default=64, metavar="N",
                      help="also compare on N standard-normal inputs (default: 64; 0 to skip)")
    conv.add_argument("--disable-pass", action="append", default=[], choices=PASS_NAMES, metavar="NAME",
                      help="skip a graph pass (repeatable); 'python -m qdq_bridge passes' lists them")
    conv.add_argument("--exporter", choices=EXPORTERS, default="auto",
                      help="structural: build the Q/DQ ONNX from the model's structure and quantization parameters "
                           "(no quantized kernel runs); torch: torch.onnx's TorchScript-based exporter; auto "
                           "(default): structural, torch where it does not know an op")
    conv.add_argument("--placement", choices=PLACEMENTS, default="faithful",
                      help="faithful (default): keep every PyTorch quantization point; fast: move Q/DQ where "
                           "TensorRT fuses residual Add+ReLU into convolutions (see the README for the trade-off)")
    conv.add_argument("--opset", type=int, default=13, help="ONNX opset (default: 13; per-channel Q/DQ needs 13+)")
    conv.add_argument("--static-batch", action="store_true", help="export a fixed batch dimension")
    conv.add_argument("--batch-size", type=int, default=64, help="inference batch size for parity (default: 64)")
    conv.add_argument("--min-agreement", type=float, default=0.995,
                      help="minimum top-1 agreement, 0..1 (default: 0.995)")
    conv.add_argument("--max-accuracy-gap", type=float, default=0.2,
                      help="accuracy the candidate may lose against PyTorch, in percentage points, before the loss "
                           "is tested (default: 0.2)")
    conv.add_argument("--significance", type=float, default=SIGNIFICANCE, metavar="ALPHA",
                      help="a loss beyond --max-accuracy-gap fails when an exact one-sided McNemar test on the "
                           f"samples the two get differently finds it at p < ALPHA (default: {SIGNIFICANCE:g}; 1: "
                           "every loss beyond the gap fails)")
    conv.add_argument("--logits", metavar="NAME|INDEX", help="the output the dataset's labels and the headline "
                                                             "agreement are taken on, by name or index (default: the "
                                                             "first 2-D output); every output is judged by its kind")
    conv.add_argument("--task", action="append", default=[], metavar="[OUTPUT=]KIND",
                      help="how an output is judged: classification (N x C, top-1), dense (N x C x ..., per-position "
                           "argmax) or generic (cosine and steps); default from its shape (README, Parity); "
                           "repeatable, without OUTPUT= for every output")
    conv.add_argument("--class-axis", action="append", default=[], metavar="[OUTPUT=]AXIS",
                      help="the axis classes lie on for classification and dense outputs (default: 1)")
    conv.add_argument("--min-position-agreement", type=float, default=0.99,
                      help="minimum per-position argmax agreement of dense outputs, 0..1 (default: 0.99)")
    conv.add_argument("--min-cosine", type=float, default=0.99,
                      help="generic outputs: a sample agrees at this cosine similarity and norm ratio, or with every "
                           "element within one output step (default: 0.99); --min-agreement of samples must agree")
    conv.add_argument("--ignore-index", type=int, default=255,
                      help="per-position labels of this value are not judged (default: 255)")

    data = conv.add_argument_group("datasets (image datasets are streamed: decoded batch by batch by worker processes)")
    data.add_argument("--preprocess", choices=sorted(PRESETS), help="preset resize ratio, mean/std and color; "
                                                                    "options below override its fields")
    data.add_argument("--resize", type=int, metavar="N", help="resize the shorter side to N before the crop "
                                                              "(default: the crop's longer side; imagenet: 256/224)")
    data.add_argument("--center-crop", type=_size, metavar="H[,W]",
                      help="center crop (default: the model's input size)")
    data.add_argument("--mean", type=_floats, metavar="LIST",
                      help="per-channel mean subtracted after scaling to [0, 1]")
    data.add_argument("--std", type=_floats, metavar="LIST", help="per-channel std divided by (with --mean)")
    data.add_argument("--color", choices=("rgb", "gray"), help="decode images as RGB (gray ones repeated in 3 "
                                                               "channels) or gray (luma); default: the dataset's own")
    data.add_argument("--limit", type=_positive, metavar="N", help="parity on a seeded random subset of N samples")
    data.add_argument("--calibration-samples", type=_positive, metavar="N",
                      help="calibrate on a seeded random subset of N samples (default: all)")
    data.add_argument("--seed", type=int, default=0, help="seed of both subsets (default: 0)")
    data.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                      help=f"processes decoding images (default: {default_workers()}, the cores up to 4; 0: none)")
    data.add_argument("--no-progress", action="store_true",
                      help="no progress bar (it shows only where stderr is a terminal)")

    trt = conv.add_argument_group("TensorRT engine (built by a worker process; see the README)")
    trt.add_argument("--engine", choices=ENGINE_MODES, default="auto",
                     help="auto: build the INT8 engine when TensorRT is found (default); require: fail without it")
    _add_build_options(trt)
    trt.add_argument("--engine-input", choices=ENGINE_INPUTS, default="float",
                     help="what the INT8 engine takes: float (the preprocessed input, default), or 8-bit pixels "
                          "(uint8-nchw, uint8-nhwc as decoders give them) with the preprocessing inside the engine")
    trt.add_argument("--compare-precisions", default="", metavar="LIST",
                     help="also build engines of the float twin for comparison: fp16, fp32 or fp16,fp32")

    build = commands.add_parser("build", help="build a TensorRT engine from a Q/DQ ONNX file",
                                description="Builds the INT8 engine of an ONNX file as convert does (a converted "
                                            "model's, or one that polygraphy debug reduce cut down) and writes it "
                                            "with its layer report (<engine>.layers.json). Exit status: 0 built, 1 "
                                            "TensorRT could not build it, 2 bad input or no TensorRT.")
    build.add_argument("onnx", help="ONNX model file")
    build.add_argument("-o", "--engine-file", help="engine to write (default: the ONNX file's name with .engine)")
    build.add_argument("--trt-log", metavar="FILE", type=Path,
                       help="write TensorRT's log of the build to FILE at VERBOSE severity (as trtexec --verbose), "
                            "also when the build fails: its last lines name the layers TensorRT was fusing")
    _add_build_options(build)

    lint = commands.add_parser("lint", help="check an ONNX file against TensorRT's explicit-quantization rules",
                               description="Prints one line per violation. Exit status: 0 no errors, 1 errors, "
                                           "2 bad input.")
    lint.add_argument("onnx", help="ONNX model file")
    lint.add_argument("--json", action="store_true", help="print the violations as JSON")

    commands.add_parser("passes", help="list the graph passes in the order convert applies them, with the "
                                       "placements (--placement) that run each")
    return parser


def _add_build_options(group) -> None:
    """The options of a TensorRT build, for convert and build."""
    group.add_argument("--trt-python", metavar="PYTHON", help=f"interpreter that has tensorrt (default: "
                                                              f"${PYTHON_ENV} or this Python)")
    group.add_argument("--trt-timeout", type=float, default=900.0, metavar="S",
                       help="seconds before a TensorRT worker call is abandoned (default: 900)")
    group.add_argument("--batch-range", type=_shape, default=(1, 32, 256), metavar="MIN,OPT,MAX",
                       help="optimization profile for the batch dimension (default: 1,32,256)")
    group.add_argument("--workspace-mib", type=int, default=4096, help="builder workspace limit (default: 4096)")
    group.add_argument("--timing-cache", metavar="FILE",
                       help="read and update this TensorRT timing cache (default: one per TensorRT version and GPU in "
                            "$XDG_CACHE_HOME/qdq_bridge/timing, ~/.cache/qdq_bridge/timing)")
    group.add_argument("--no-timing-cache", action="store_true",
                       help="build without a timing cache: every kernel is timed again")
    group.add_argument("--builder-optimization-level", type=int, choices=OPTIMIZATION_LEVELS, metavar="0-5",
                       help="TensorRT's builder optimization level: lower builds sooner and may choose slower "
                            "kernels (default: TensorRT's own, 3)")
    group.add_argument("--typing", choices=TYPINGS, default="auto",
                       help="strong: precisions from the ONNX alone, no precision flags (TensorRT 9.1+, the only way "
                            "from 11.x); weak: INT8/FP16 builder flags (8.6 to 10.x); auto (default): strong where "
                            "the TensorRT has it")
    group.add_argument("--float-precision", choices=FLOAT_PRECISIONS, default="fp16",
                       help="float compute outside the Q/DQ pairs in the engine (default: fp16): strongly typed "
                            "builds take it from a mixed-precision copy of the ONNX (<name>.qdq.fp16.onnx), weakly "
                            "typed ones from the FP16 flag")


def _build_settings(args: argparse.Namespace) -> BuildSettings:
    if args.timing_cache and args.no_timing_cache:
        raise BridgeError("--timing-cache and --no-timing-cache contradict each other", "pass one of them")
    batches = _batch_range(args.batch_range)
    return BuildSettings(fp16_fallback=args.float_precision == "fp16", typing=args.typing, min_batch=batches[0],
                         opt_batch=batches[1], max_batch=batches[2], workspace_mib=args.workspace_mib,
                         timing_cache=args.timing_cache, optimization_level=args.builder_optimization_level,
                         **({"timing_cache_dir": None} if args.no_timing_cache else {}))


def _build(args: argparse.Namespace) -> int:
    """The build command: the engine and its layer report, or TensorRT's reason in one line (exit status 1)."""
    source = readable_file(args.onnx, "ONNX file")
    engine = Path(args.engine_file or source.with_suffix(".engine"))
    log = args.trt_log
    if log is not None and not log.parent.is_dir():
        raise BridgeError(f"--trt-log {log}: folder '{log.parent}' does not exist",
                          "create it, or pass a file in an existing folder")
    read_onnx(source)  # an unreadable file, or external data that is missing, named before TensorRT starts
    new_log = log is not None and not log.exists()
    worker = TensorRTWorker(args.trt_python, args.trt_timeout)
    settings = dataclasses.replace(_build_settings(args), verbose_log=log is not None)
    try:
        built = build_engine(source, engine, settings, worker, log)
    except TensorRTUnavailable:
        if new_log and log.exists() and not log.stat().st_size:
            log.unlink()  # no build ran: no empty log left behind
        raise  # a set-up to mend: exit status 2
    except BridgeError as exc:  # TensorRT could not build this ONNX: a failed check
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED_CHECKS
    finally:
        worker.close()
    summary = built.layer_summary
    print(f"{engine}: {summary['layers']} layers, {summary['conv_gemm_layers']} conv/GEMM "
          f"({len(summary['conv_gemm_not_int8'])} not INT8), {len(summary['standalone_add_layers'])} standalone Add, "
          f"built in {built.build['build_seconds']:.1f} s ({built.build['typing']}ly typed); layers: "
          f"{built.layers_file}")
    return EXIT_OK


def _log_progress() -> None:
    """qdq_bridge's progress lines on stderr. Other libraries keep their loggers' defaults: at INFO the dynamo
    exporter's optimizer logs every Q/DQ constant it does not fold."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("qdq_bridge: %(message)s"))
    logger = logging.getLogger("qdq_bridge")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _print_convert(console: Console, result) -> None:
    table = Table(title=f"{result.report['model']} -> {result.onnx_path}")
    for column in ("dataset", "reference", "candidate", "samples", "agreement", "accuracy (ref / cand)",
                   "lost / gained, p", "max |diff|"):
        table.add_column(column, no_wrap=True)
    for c in result.parity:
        accuracy = "–" if c.reference_accuracy is None else \
            f"{c.reference_accuracy * 100:.2f}% / {c.candidate_accuracy * 100:.2f}%"
        discordant = "–" if c.lost is None else f"{c.lost} / {c.gained}, {c.loss_test()['p_value']:.2g}"
        table.add_row(c.dataset, c.reference, c.candidate, str(c.samples), f"{c.agreement * 100:.2f}%", accuracy,
                      discordant, "–" if c.max_abs_diff is None else f"{c.max_abs_diff:.4g}")
    console.print(table)
    first = result.parity[0].outputs if result.parity else {}
    console.print(f"judged on {result.report['logits']}; outputs: " + ", ".join(
        f"{name} {m['kind']} ({m.get('measure', 'cannot be measured')})" for name, m in first.items()),
        highlight=False)
    for entry in result.report["datasets"]:
        console.print(f"{entry['name']}: {entry['samples']} samples, images/s " + ", ".join(
            f"{backend} {rate:,.0f}" for backend, rate in entry["images_per_second"].items()), highlight=False)
    for note in result.report["notes"]:
        console.print(f"note: {note}", highlight=False)
    summary = result.report["tensorrt"].get("layer_summary")
    if summary:
        console.print(f"TensorRT engine: {result.report['tensorrt']['engine']}, {summary['layers']} layers, "
                      f"{summary['conv_gemm_layers']} conv/GEMM ({len(summary['conv_gemm_not_int8'])} not INT8), "
                      f"{len(summary['pointwise_layers'])} standalone pointwise, "
                      f"{len(summary['reformat_layers'])} reformat", highlight=False)
    n_errors = len(error_violations(result.lint))
    console.print(f"lint: {n_errors} errors, {len(result.lint) - n_errors} warnings; "
                  f"reports: {result.report_md}, {result.report_json}")
    reference = result.report["pytorch_reference"]
    console.print("PyTorch reference: the PT2E program" if result.report["kind"].startswith("pt2e") else
                  f"PyTorch reference: {reference['backend']} backend", highlight=False)
    console.print("[green]PASS[/green]" if result.ok else "[red]FAIL[/red]: " + "; ".join(result.report["failed"]),
                  highlight=False)


def _raise_broken_pipe() -> None:
    raise BrokenPipeError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if any(arg.partition("=")[0] == "--torch-engines" for arg in argv):  # the spelling of 0.2, kept for one release
        print("warning: --torch-engines is now --torch-backends (PyTorch's quantized backends are not TensorRT "
              "engines); the old spelling goes in the next release", file=sys.stderr)
    console = Console(width=None if sys.stdout.isatty() else 132)
    console.on_broken_pipe = _raise_broken_pipe  # rich's own exits 1, which would read as a failed check
    # SIGTERM and SIGHUP (a closed terminal) unwind like Ctrl-C: worker processes end, the run's scratch files go
    # (pipeline._output_folder)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    result = None
    try:
        if args.command == "passes":
            for graph_pass in PASSES:
                placements = "fast" if graph_pass.fast_only else "faithful, fast"
                print(f"{graph_pass.name:33} {placements:15} {graph_pass.summary}")
            return EXIT_OK
        if args.command == "lint":
            violations = lint_file(args.onnx)
            found = error_violations(violations)
            if args.json:
                print(to_json(violations))
            else:
                for violation in violations:
                    print(violation)
                print(f"{len(found)} errors, {len(violations) - len(found)} warnings")
            return EXIT_FAILED_CHECKS if found else EXIT_OK
        if args.command == "build":
            return _build(args)
        options = ConvertOptions(
            input_shape=args.input_shape, arch=args.arch, trust_pickle=args.trust_pickle, calibrate=args.calibrate,
            observer=args.observer, qconfig=args.qconfig, requantize_activations=args.requantize_activations,
            keep_float=args.keep_float, torch_backends=args.torch_backends, spread=not args.no_spread,
            dataset=args.dataset, random_inputs=args.random_inputs,
            preprocess=Preprocessing(args.preprocess, args.resize, args.center_crop, args.mean, args.std, args.color),
            limit=args.limit, calibration_samples=args.calibration_samples, seed=args.seed, workers=args.workers,
            progress=not args.no_progress,
            exporter=args.exporter, disabled_passes=tuple(args.disable_pass), placement=args.placement,
            opset=args.opset, dynamic_batch=not args.static_batch,
            batch_size=args.batch_size, min_agreement=args.min_agreement,
            max_accuracy_gap_points=args.max_accuracy_gap, significance=args.significance, logits=args.logits,
            tasks=_assignments(args.task), class_axes=_assignments(args.class_axis, whole=True),
            min_position_agreement=args.min_position_agreement, min_cosine=args.min_cosine,
            ignore_index=args.ignore_index,
            engine=args.engine, trt_python=args.trt_python,
            trt_timeout_s=args.trt_timeout, float_precision=args.float_precision, engine_input=args.engine_input,
            compare_precisions=_precisions(args.compare_precisions),
            trt=_build_settings(args))
        readable_file(args.model, "model file")  # a path that is no readable file: refused before torch loads
        _log_progress()
        from .pipeline import convert  # the conversion's side (torch, ONNX Runtime, scipy), once the options hold

        result = convert(args.model, args.output_dir, options)
        try:
            _print_convert(console, result)
            sys.stdout.flush()
        except BrokenPipeError:  # `convert ... | head`: the run is complete, its verdict is the exit status
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK if result.ok else EXIT_FAILED_CHECKS
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Interrupted) as exc:
        number = exc.signal_number if isinstance(exc, Interrupted) else signal.SIGINT
        files_in = result.report_md.parent if result else getattr(exc, "files_in", None)
        done = f" after the run completed: its files are in '{files_in}'" if files_in else \
            ": this run's partial files were removed"
        print(f"error: interrupted by {signal.Signals(number).name}{done}", file=sys.stderr)
        return 128 + number


if __name__ == "__main__":
    sys.exit(main())
