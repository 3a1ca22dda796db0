"""The coverage table (issue 33): every module class PyTorch's quantized packages list, what qdq_bridge does with it,
each claim held to a test, and the README's table the one this PyTorch gives."""
import importlib
import re

import pytest
import torch

from qdq_bridge.export.coverage import COVERAGE, STRUCTURAL, coverage_table, listed_modules

from helpers import ROOT
from helpers.quantized_modules import MODELS, quantized

START, END = "<!-- coverage table: start -->", "<!-- coverage table: end -->"


def test_every_claim_names_a_module_this_pytorch_lists():
    assert set(COVERAGE) <= set(listed_modules())


def test_every_converting_claim_is_a_module_the_export_tests_convert():
    """A module claimed to convert is in one of the models `test_the_rest_of_the_quantized_module_set` exports
    through both frontends and holds within one output step of PyTorch (FloatFunctional by its converted form,
    QFunctional)."""
    classes = {getattr(importlib.import_module(package), name): (package, name) for package, name in listed_modules()}
    exported = set()
    for name in MODELS:
        model, _ = quantized(name)
        exported |= {classes[type(m)] for m in model.modules() if type(m) in classes}
    if ("torch.ao.nn.quantized", "QFunctional") in exported:
        exported.add(("torch.ao.nn.quantized", "FloatFunctional"))
    claimed = {key for key, status in COVERAGE.items() if status == STRUCTURAL}
    assert claimed <= exported, f"claimed without a test: {sorted(claimed - exported)}"


def test_the_readme_table_is_this_pytorchs():
    readme = (ROOT / "README.md").read_text()
    made_on = re.search(r"made on torch (\S+?)[):]", readme).group(1)
    table = readme.split(START)[1].split(END)[0].strip()
    if torch.__version__.split("+")[0] != made_on:
        differing = set(coverage_table().splitlines()) ^ set(table.splitlines())
        pytest.skip(f"the README's table was made on torch {made_on}, this is {torch.__version__}; rows that "
                    f"differ: {sorted(differing)}")
    assert table == coverage_table()
