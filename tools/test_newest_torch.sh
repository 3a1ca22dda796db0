#!/usr/bin/env bash
# The fast test tier (pytest -m "not slow") on PyPI's newest torch and torchvision, in a virtualenv of its own
# (.ci/venv-newest), so that a PyTorch release that breaks qdq_bridge shows before users meet it. This project's
# machines cap pip at older versions through a constraints file in pip's machine config: that config is switched
# off for this environment only (PIP_CONFIG_FILE), with the system's CA bundle passed to pip itself.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.ci/venv-newest
cert=$(python3 -c "import ssl; print(ssl.get_default_verify_paths().cafile or '')")
[ -f "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
[ -x $venv/bin/python ] || python3 -m venv $venv
PIP_CONFIG_FILE=/dev/null $venv/bin/pip install -q --cert "$cert" --upgrade torch torchvision -e ".[test]"
$venv/bin/python -c "import torch, torchvision; print('newest torch', torch.__version__, 'torchvision', torchvision.__version__)"
$venv/bin/python -m pytest -q -m "not slow" -p no:cacheprovider
