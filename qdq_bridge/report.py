"""Stage 6, report: report.json (everything, machine-readable) and report.md (the same, for people)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from .measures import agreement_threshold

if TYPE_CHECKING:  # the report is plain JSON-able dicts; these name the shapes of its parts made elsewhere
    from .measures import OutputMeasures
    from .trt.stage import TensorRTStageResult


class Thresholds(TypedDict):
    min_agreement: float  # top-1 of classification outputs, agreeing samples of generic ones
    min_position_agreement: float  # per-position argmax of dense outputs
    min_cosine: float  # a generic output's sample agrees at this cosine and norm ratio (or within one step)
    max_accuracy_gap_points: float
    significance: float
    loss_interval_confidence: float  # of the loss's confidence interval (verify.interval_confidence)


class ParityRow(TypedDict, total=False):
    """One reference/candidate pair on one dataset: verify.Comparison.as_dict, and whether the verdict judged it."""
    dataset: str
    reference: str  # "pytorch", "onnxruntime"
    candidate: str  # "onnxruntime", "tensorrt", "tensorrt-fp16", "tensorrt-fp32", "pytorch:BACKEND" (the spread)
    samples: int
    agreement: float  # of the judged output (`logits`), by its kind's measure (outputs[logits]["measure"])
    max_abs_diff: float | None  # of the judged output; None where it could not be measured
    mean_abs_diff: float | None
    reference_accuracy: float | None  # of the labelled output (pixel accuracy on a dense one); None unlabelled
    candidate_accuracy: float | None
    logits: str
    reference_ties: int
    lost: int | None  # labelled samples the reference gets right and the candidate wrong
    gained: int | None
    outputs: dict[str, OutputMeasures]  # every output by its kind: differences, agreement, accuracy
    accuracy_of: str | None  # the output the labels were judged on
    missing_outputs: list[str]
    nonfinite: dict[str, int]
    accuracy_gap_points: float | None
    loss_test: dict | None  # p_value, gap_ci_points, confidence
    accuracy_verdict: str  # labelled rows: why the accuracy passed or failed
    spread: dict[str, dict]  # output -> against PyTorch's second backend: peer, peer_agreement, worse, better, p_value
    judged: bool


class DatasetEntry(TypedDict, total=False):
    name: str
    samples: int
    classes: int | None
    images_per_second: dict[str, float]  # per backend
    preprocessing: dict  # image datasets: what was resolved (resize, crop, mean/std, color)


class Report(TypedDict):
    """report.json: everything a conversion found, in one JSON object (report.md renders it)."""
    model: str  # the model file's name
    source: str  # its path as given
    kind: str  # torchscript, pickled module, state_dict, ...
    notes: list[str]
    input_shape: list[int]
    opset: int
    exporter: str
    onnx: str  # the Q/DQ ONNX file, in the output folder
    ok: bool  # the verdict
    failed: list[str]  # why not, one line each
    pytorch_reference: dict  # pytorch.reference.Reference.as_dict: backend, packed_by, cross_check, ...
    outputs: dict[str, list[int]]  # every output's shape after the batch dimension
    logits: str  # the output judged for top-1 and accuracy
    thresholds: Thresholds
    parity: list[ParityRow]
    datasets: list[DatasetEntry]
    op_counts: dict[str, int]  # of the final ONNX
    activations: dict  # graph.activations.as_report: schemes as exported, requantized ones
    placement: str  # faithful | fast
    passes: list[str]  # applied, in order
    passes_disabled: list[str]
    lint: list[dict]  # graph.lint.Violation fields
    tensorrt: TensorRTStageResult  # {} without an engine
    stage_seconds: dict[str, float]
    versions: dict[str, str]


def _pct(value: float | None) -> str:
    """A rate in percent; one that rounds to 100.00 % without being 1 shows three decimals (99.999 %)."""
    if value is None:
        return "–"
    return f"{value * 100:.3f}%" if 0.99995 <= value < 1 else f"{value * 100:.2f}%"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _outputs_section(report: Report) -> list[str]:
    """Every output of every pair: its kind and where it came from, the measure the verdict took with its
    threshold and what it decided on the judged rows (the labelled output's accuracy test is the Parity section's
    line), and the element-wise differences (in output steps where the output is quantized)."""
    thresholds = report["thresholds"]
    lines = ["", "## Outputs", "",
             "Differences are in the output's quantization steps where it leaves the graph through a "
             "DequantizeLinear, absolute otherwise; p99.9 is the 99.9th percentile of the element-wise |diff|.", "",
             "| dataset | reference | candidate | output | shape | kind (from) | measure | agreement | needed | "
             "decides | max / p99.9 / mean diff | within 1 step | cosine mean / min | accuracy ref / cand | "
             "mIoU ref / cand |",
             "|---|---|---|---|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for c in report["parity"]:
        for name, m in c["outputs"].items():
            shape = "x".join(["N", *map(str, report["outputs"].get(name, []))])
            head = f"| {c['dataset']} | {c['reference']} | {c['candidate']} | {name} | {shape} | {m['kind']} " \
                   f"({m['kind_source']}) |"
            if "unmeasurable" in m:
                lines.append(f"{head} cannot be measured: {m['unmeasurable']} | – | – | "
                             f"{'FAIL' if c['judged'] else 'shown only'} | – | – | – | – | – |")
                continue
            needed = agreement_threshold(m["kind"], thresholds["min_agreement"], thresholds["min_position_agreement"])
            diffs = f"{m['max_diff']:.4g} / {m['p999_diff']:.4g} / {m['mean_diff']:.4g} {m['unit']}"
            cosine = f"{m['cosine_mean']:.5f} / {m['cosine_min']:.5f}" if "cosine_mean" in m else "–"
            accuracy = f"{_pct(m['reference_accuracy'])} / {_pct(m['candidate_accuracy'])}" \
                if "reference_accuracy" in m else "–"
            miou = f"{_pct(m['reference_miou'])} / {_pct(m['candidate_miou'])}" if "reference_miou" in m else "–"
            decides = ("pass" if m["agreement"] >= needed else "FAIL") if c["judged"] else "shown only"
            lines.append(f"{head} {m['measure']} | {_pct(m['agreement'])} | {_pct(needed)} | {decides} | {diffs} | "
                         f"{_pct(m['within_one_step'])} | {cosine} | {accuracy} | {miou} |")
    return lines


def render_markdown(report: Report) -> str:
    thresholds = report["thresholds"]
    lines = [f"# qdq_bridge report: {report['model']}", "",
             f"- source: `{report['source']}` ({report['kind']})",
             f"- input shape: {report['input_shape']}, opset {report['opset']}",
             f"- ONNX: `{report['onnx']}`",
             f"- verdict: **{'PASS' if report['ok'] else 'FAIL'}** (on the judged rows, every output by its kind: "
             f"classification top-1 agreement ≥ {thresholds['min_agreement'] * 100:g}%, dense per-position argmax "
             f"agreement ≥ {thresholds['min_position_agreement'] * 100:g}%, generic: ≥ "
             f"{thresholds['min_agreement'] * 100:g}% of samples within one output step or at cosine and norm ratio "
             f"≥ {thresholds['min_cosine']:g}; no accuracy loss on the labelled output beyond "
             f"{thresholds['max_accuracy_gap_points']:g} points that an exact McNemar test (a sign test over images "
             f"on per-position labels) finds at p < {thresholds['significance']:g}; no lint errors)"]
    lines += [f"  - failed: {reason}" for reason in report["failed"]]
    lines += [_reference_line(report["pytorch_reference"], report["kind"])]
    lines += [f"- note: {note}" for note in report["notes"]]
    lines += ["", "## Parity", "", TIES_RULE, "",
              f"Agreement and accuracy are taken on `{report['logits']}`; every output's measures follow.", "",
              "| dataset | reference | candidate | samples | agreement | ref. accuracy | cand. accuracy "
              f"| lost / gained | loss, points [{report['thresholds']['loss_interval_confidence'] * 100:g}% CI] "
              "| McNemar p | max abs diff | mean abs diff | judged |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in report["parity"]:
        lines.append(f"| {c['dataset']} | {c['reference']} | {c['candidate']} | {c['samples']} | "
                     f"{_pct(c['agreement'])} | {_pct(c['reference_accuracy'])} | "
                     f"{_pct(c['candidate_accuracy'])} | {_loss_cells(c)} | {_number(c['max_abs_diff'])} | "
                     f"{_number(c['mean_abs_diff'])} | {'yes' if c['judged'] else 'shown only'} |")
    lines += [f"- {c['reference']} vs {c['candidate']} on {c['dataset']}: {c['accuracy_verdict']}"
              for c in report["parity"] if c["judged"] and c.get("accuracy_verdict")]
    lines += _outputs_section(report)
    lines += ["", "## Datasets", ""] + [_dataset_line(entry) for entry in report.get("datasets", [])]
    lines += ["", "## Graph", "", "| op | count |", "|---|---:|"]
    lines += [f"| {op} | {n} |" for op, n in report["op_counts"].items()]
    lines += ["", f"Exported by {report['exporter']}. Placement: {report['placement']}. Passes applied: {', '.join(report['passes']) or 'none'}",
              f"{', '.join(report['passes_disabled'])} disabled." if report["passes_disabled"] else "",
              *_activations_lines(report.get("activations")),
              "", "## Lint", ""]
    lines += [f"- {v['severity']} {v['rule']} `{v['node']}`: {v['message']}" for v in report["lint"]] or \
             ["No violations of TensorRT's explicit-quantization rules."]
    lines += _tensorrt_section(report.get("tensorrt") or {})
    lines += ["", "## Stage times", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {stage} | {sec:.2f} |" for stage, sec in report["stage_seconds"].items()]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


TIES_RULE = ("Ties: where the reference's largest logits tie exactly (int8 logits often do), a candidate choosing any "
             "of the tied classes agrees, and for accuracy the reference takes the candidate's class where they agree "
             "(its own argmax where they do not): agreeing backends are right or wrong together. Lost / gained: "
             "labelled samples the reference gets right and the candidate wrong, and the converse.")


def _loss_cells(row: dict) -> str:
    """lost / gained, the loss with its interval (none on per-position labels), and the one-sided McNemar (sign
    test) p; – without labels."""
    test = row.get("loss_test")
    if test is None:
        return "– | – | –"
    interval = "" if test["gap_ci_points"] is None else " [{:.2f}, {:.2f}]".format(*test["gap_ci_points"])
    return f"{row['lost']} / {row['gained']} | {row['accuracy_gap_points']:.2f}{interval} | {test['p_value']:.3g}"


def _dataset_line(entry: dict) -> str:
    line = f"- {entry['name']}: {entry['samples']} samples; images/s " + ", ".join(
        f"{backend} {rate:,.0f}" for backend, rate in entry["images_per_second"].items())
    if "preprocessing" in entry:
        line += "; preprocessing " + ", ".join(f"{k} {v}" for k, v in entry["preprocessing"].items() if v is not None)
    return line


def _reference_line(reference: dict, kind: str) -> str:
    if kind.startswith("pt2e"):
        return "- PyTorch reference: the PT2E program (its quantize/dequantize ops in float, no quantized backend)"
    line = f"- PyTorch reference: {reference['backend']} backend (weights packed by {reference['packed_by']})"
    backends = reference.get("cross_check", {}).get("backends", {})
    if backends:
        line += "; from the Q/DQ graph's float emulation: " + ", ".join(
            f"{backend} {d['mean_steps']:.2f} steps mean, {d['max_steps']:.0f} max" for backend, d in backends.items())
    return line


def _tensorrt_section(trt: TensorRTStageResult) -> list[str]:
    lines = ["", "## TensorRT", ""]
    if not trt:
        return lines + ["No engine was built (see the notes)."]
    if "failed" in trt:
        lines.append(f"- **the {trt['failed']['step']} failed**: {trt['failed']['message']}")
    if "layer_summary" not in trt:
        return lines
    summary, build = trt["layer_summary"], trt["build"]
    source = "the ONNX" if build["precision_source"] == "onnx" else "builder flags " + ", ".join(build["flags"])
    lines += [f"- TensorRT {trt['probe']['features']['version']}, engine `{trt['engine']}` built in "
              f"{build['build_seconds']:.1f} s (builder optimization level {build['optimization_level']}; the "
              f"worker's build call {build['call_seconds']:.1f} s, its probe {trt['probe']['call_seconds']:.1f} s) "
              f"from `{trt['engine_onnx']}`: {build['typing']}ly typed, "
              f"precisions from {source}",
              f"- {summary['layers']} layers; {summary['conv_gemm_layers']} convolution/GEMM layers, not INT8: "
              f"{', '.join(summary['conv_gemm_not_int8']) or 'none'}",
              f"- standalone pointwise layers: {len(summary['pointwise_layers'])}; reformat layers: "
              f"{len(summary['reformat_layers'])}",
              "", "| layer type | count |", "|---|---:|"]
    lines += [f"| {kind} | {n} |" for kind, n in sorted(summary["by_type"].items())]
    divergence = trt.get("divergence", {})
    for row in divergence.get("first", []):
        lines.append(f"- diverges at `{row['tensor']}`: {row['steps']:.1f} quantization steps "
                     f"({row['fraction_over'] * 100:.2f}% of values over 2 steps)")
    if divergence.get("not_exposable"):
        lines.append("- tensors TensorRT could not expose for the comparison: " + ", ".join(divergence["not_exposable"]))
    for tensor, reason in divergence.get("skipped", {}).items():
        lines.append(f"- not compared: `{tensor}` ({reason})")
    if divergence.get("not_scanned"):
        lines.append(f"- the locator stopped after {divergence['builds']} builds; not compared: "
                     + ", ".join(divergence["not_scanned"]))
    return lines


def parity_lines(report: Report) -> list[str]:
    """One plain-text line per parity row (dataset, pair, agreement, accuracies, max |diff|), for logs."""
    lines = []
    for row in report["parity"]:
        accuracy = "" if row["reference_accuracy"] is None else \
            f" acc {row['reference_accuracy'] * 100:.2f}% / {row['candidate_accuracy'] * 100:.2f}%"
        lines.append(f"  {row['dataset']:<22} {row['reference']:>11} vs {row['candidate']:<14} agree "
                     f"{row['agreement'] * 100:6.2f}%{accuracy} max|diff| {_number(row['max_abs_diff'])}")
    return lines


def write_reports(report: Report, folder: Path) -> tuple[Path, Path]:
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def _activations_lines(activations: dict | None) -> list[str]:
    """The model's activation quantization, as PyTorch had it, and what became of each affine one."""
    if not activations:
        return []
    schemes = activations["schemes"]
    lines = ["", "## Activations", "",
             f"As exported from PyTorch: {schemes['symmetric']} symmetric, {schemes['affine']} affine with zero-point "
             f"<= 128, {schemes['full_range']} affine with zero-point > 128.", ""]
    if activations["affine"]:
        lines += ["| activation | module | zero-point | scale | values past +127 steps | became |", "|---|---|---:|---:|---:|---|"]
        lines += [f"| `{a['tensor']}` | {a['module']} | {a['zero_point']} | {a['scale']:.4g} | "
                  f"{a['values_above_int8']:,} of {a['values_measured']:,} | "
                  + (f"symmetric int8, scale {a['requantized_scale']:.4g} (re-quantized)" if a["requantized_scale"]
                     else "int8, same scale (exact up to +127 steps)") + " |" for a in activations["affine"]]
    return lines
