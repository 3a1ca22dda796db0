#!/usr/bin/env bash
# One step of a GPU session on the lent machine (see ../shared/trt-device/README.md), run from the project root
# there, after the TensorRT kit's parts were carried to /opt/trtkit-parts and the onnx-graphsurgeon wheel to .whl/
# (`pip download onnx-graphsurgeon --no-deps -d .whl` here). The machine keeps /opt and benchmarks/out only while
# it stays warm: run the steps back to back.
#
#   bash tools/gpu_session.sh setup                    install the kit and onnx-graphsurgeon only (before steps run
#                                                      side by side; they slow each other, and a call that passes
#                                                      600 s loses what has not come back: beside the GPU
#                                                      tests, prepare and clamps did not fit in one call)
#   bash tools/gpu_session.sh prepare                  train, quantize and save the family matrix's models
#   bash tools/gpu_session.sh clamps                   benchmarks/affine_clamps.py on the x86-default ResNet-18
#   bash tools/gpu_session.sh convert SECONDS          the matrix's conversions not yet done, for at most SECONDS
#   bash tools/gpu_session.sh gputests SECONDS [ARGS]  tests/trt/test_gpu_tensorrt.py, 4 at a time
#   bash tools/gpu_session.sh pt2e SECONDS             benchmarks/pt2e_vs_eager.py: PT2E ResNet-50's engine beside the
#                                                      eager one (needs .whl/ to hold torchao and onnxscript wheels)
#   bash tools/gpu_session.sh reduce ROW SECONDS [ARGS] polygraphy debug reduce on a matrix row's engine ONNX whose
#                                                      build failed (ROW: e.g. inception_v3-fast; REGEX, the phrase of
#                                                      TensorRT's error; ARGS: options of qdq_bridge build, e.g.
#                                                      --builder-optimization-level 0: the iterations that build take
#                                                      longest); cut short, it keeps the last failing cut
#   bash tools/gpu_session.sh serving SECONDS [ARGS]   benchmarks/serving.py (ARGS: its options); its tables and
#                                                      results.json come back in $OUT
#   bash tools/gpu_session.sh levels SECONDS [ARGS]    benchmarks/builder_levels.py (ARGS: its options, e.g.
#                                                      --families resnet18,googlenet --levels 1,2,3); tables and
#                                                      results.json come back in $OUT
#   bash tools/gpu_session.sh models DIR SECONDS       convert every DIR/NAME.pt with DIR/NAME.npz, --engine require,
#                                                      both placements, four at a time; a line each, models.json in $OUT
#   bash tools/gpu_session.sh variants ROW SECONDS [ARGS] benchmarks/build_variants.py on a matrix row's engine ONNX:
#                                                      its variants and block prefixes built side by side (ARGS:
#                                                      options of every build); the table, and the last 300 lines
#                                                      of each failed build's VERBOSE log, come back in $OUT
#
# FAMILIES (the matrix's entries), EPOCHS, CONVERT_ARGS (options for every convert) and CONVERT_JOBS (conversions at
# a time, sharing the 16 cores; 1 by default) change the defaults.
set -u
step=$1; shift
if [ ! -x /opt/trtkit/bin/trt-python ]; then
  cat /opt/trtkit-parts/kit.tar.xz.* | xz -dc | tar -x -C / && rm -rf /opt/trtkit-parts
fi
if [ ! -d /tmp/site/onnx_graphsurgeon ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD QDQ_BRIDGE_TRT_PYTHON=/opt/trtkit/bin/trt-python PYTHONUNBUFFERED=1
FAMILIES=${FAMILIES:-resnet18@x86,resnet50@torchvision,resnet18,resnet50,mobilenet_v2,mobilenet_v3_large,shufflenet_v2_x1_0,googlenet,inception_v3,resnext101_32x8d}
CONVERT_ARGS=${CONVERT_ARGS:---builder-optimization-level 1 --timing-cache benchmarks/out/families/timing.cache}
out=benchmarks/out/families
nvidia-smi --query-gpu=name,uuid --format=csv,noheader
case $step in
setup) exit 0 ;;
prepare)
  python3 benchmarks/families.py --stage prepare --families "$FAMILIES" --epochs "${EPOCHS:-30}" --jobs 10 --threads 1 \
    --out $out 2>&1 | grep -v Warning | grep -v "^  " ;;
clamps)
  python3 benchmarks/affine_clamps.py $out/resnet18-x86.pt $out/resnet18-x86-test.npz --out benchmarks/out/affine_clamps \
    2>&1 | grep -v Warning | grep -v "^  "
  cp benchmarks/out/affine_clamps/affine_clamps.json "$OUT/" ;;
convert)
  jobs=${CONVERT_JOBS:-1}
  timeout "$1" python3 benchmarks/families.py --stage convert --families "$FAMILIES" --convert-jobs $jobs \
    --threads $((16 / jobs)) --out $out \
    --convert-args "$CONVERT_ARGS" 2>&1 | grep -v Warning | grep -v "^  " ;;
gputests)
  # four workers (pytest-xdist): the whole file took ~290 s on an H200 so; SIGINT at the limit, so that pytest
  # still prints what it finished, each test's summary lines (-rA) included
  OMP_NUM_THREADS=4 timeout -s INT "$1" python3 -m pytest -q -rA -n 4 -p no:cacheprovider \
    tests/trt/test_gpu_tensorrt.py "${@:2}" 2>&1 | grep -v "Warning\|calibrating" | tee "$OUT/gputests.log" ;;
pt2e)
  timeout "$1" python3 benchmarks/pt2e_vs_eager.py --out benchmarks/out/pt2e_vs_eager --convert-args \
    "--builder-optimization-level 1" 2>&1 | grep -v "Warning\|calibrating\|W1202"
  cp benchmarks/out/pt2e_vs_eager/pt2e_vs_eager.json "$OUT/" 2>/dev/null
  exit 0 ;;
serving)
  timeout "$1" python3 benchmarks/serving.py --out benchmarks/out/serving "${@:2}" 2>&1 |
    grep -v "Warning\|calibrating\|W1202" | tee "$OUT/serving.txt"
  cp benchmarks/out/serving/results.json "$OUT/serving.json" 2>/dev/null
  exit 0 ;;
levels)
  timeout "$1" python3 benchmarks/builder_levels.py --out benchmarks/out/builder_levels "${@:2}" 2>&1 |
    grep -v "Warning\|calibrating\|W1202" | tee "$OUT/builder_levels.txt"
  cp benchmarks/out/builder_levels/results.json "$OUT/builder_levels.json" 2>/dev/null
  exit 0 ;;
models)
  # four conversions at a time (each its own TensorRT worker; 16 cores)
  for model in "$1"/*.pt; do for placement in faithful fast; do echo "$model $placement"; done; done |
    timeout "$2" xargs -P 4 -L 1 sh -c 'name=$(basename "$0" .pt); python3 -m qdq_bridge convert "$0" \
      --dataset "${0%.pt}.npz" --engine require --placement "$1" --no-progress -o "benchmarks/out/models/$name-$1" \
      > /dev/null 2>&1; echo "$name $1: exit $?"'
  python3 - "$OUT/models.json" <<'PY'
import json, pathlib, sys
rows = []
for path in sorted(pathlib.Path("benchmarks/out/models").glob("*/report.json")):
    r = json.loads(path.read_text())
    trt = [p for p in r["parity"] if (p["reference"], p["candidate"]) == ("pytorch", "tensorrt") and p["judged"]]
    rows.append({"run": path.parent.name, "ok": r["ok"], "failed": r["failed"], "exporter": r["exporter"],
                 "tensorrt": {k: trt[0][k] for k in ("agreement", "reference_accuracy", "candidate_accuracy", "lost",
                                                     "gained")} if trt else None,
                 "outputs": trt[0]["outputs"] if trt else None,
                 "layers": r["tensorrt"].get("layer_summary", {}).get("layers"),
                 "build": r["tensorrt"].get("failed")})
    print(f"{path.parent.name:28} {'PASS' if r['ok'] else 'FAIL'} trt agreement "
          f"{trt[0]['agreement'] * 100 if trt else float('nan'):.2f}% {'; '.join(r['failed'])[:200]}")
json.dump(rows, open(sys.argv[1], "w"), indent=1)
PY
  exit 0 ;;
variants)
  onnx=$(python3 -c "import json; r=json.load(open('$out/$1/report.json')); print(r['tensorrt'].get('engine_onnx', r['onnx']))")
  timeout "$2" python3 benchmarks/build_variants.py "$out/$1/$onnx" --out "$out/$1/variants" --jobs 8 \
    --build-args "${*:3}" 2>&1 | grep -v Warning | tee "$OUT/$1.variants.md"
  cp "$out/$1/variants/variants.json" "$OUT/$1.variants.json"
  for name in $(python3 -c "import json
print(' '.join(r['variant'] for r in json.load(open('$out/$1/variants/variants.json'))['rows'] if r['exit']))"); do
    tail -n 300 "$out/$1/variants/$name.log" > "$OUT/$1.$name.log"
  done
  exit 0 ;;
reduce)
  cd $out/$1
  shape=$(python3 -c "import json; r=json.load(open('report.json')); print(','.join(map(str, r['input_shape'])))")
  onnx=$(python3 -c "import json; r=json.load(open('report.json')); print(r['tensorrt'].get('engine_onnx', r['onnx']))")
  input=$(python3 -c "import onnx; print(onnx.load('$onnx').graph.input[0].name)")
  timeout "$2" python3 -c "import sys; from polygraphy.tools import main; sys.exit(main())" debug reduce "$onnx" \
    -o reduced.onnx --model-input-shapes "$input:[$shape]" --fail-regex "${REGEX:-chooseHigherPrecision}" \
    --artifacts polygraphy_debug.onnx --art-dir artifacts \
    --check python3 -m qdq_bridge build polygraphy_debug.onnx "${@:3}" 2>&1 | grep -v "^    \|CAPTURED\|debug replay"
  # cut short by the timeout: the smallest model that failed so far (each iteration's lands in artifacts/bad)
  [ -f reduced.onnx ] || cp "$(ls -t artifacts/bad/*.onnx | head -n 1)" reduced.onnx
  python3 -c "import collections, onnx; m = onnx.load('reduced.onnx'); print(len(m.graph.node), 'nodes:',
    dict(collections.Counter(n.op_type for n in m.graph.node)), 'last:', [n.name for n in m.graph.node][-8:])"
  cp reduced.onnx "$OUT/$1.reduced.onnx"
  exit 0 ;;
esac
cp $out/families.json $out/families.md "$OUT/" 2>/dev/null
exit 0
