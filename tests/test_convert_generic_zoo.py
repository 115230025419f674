"""The zoo coverage suite (benchmarks/zoo.py) on a sample: builds on the meta device, converts, writes its table."""
import csv
import os

import pytest

pytest.importorskip("timm")
from benchmarks import zoo  # noqa: E402


def test_zoo_sample_writes_coverage(tmp_path):
    assert zoo.main(out=str(tmp_path), quick=True, name="zoo-sample") == 0
    with open(tmp_path / "zoo-sample.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == set(zoo.COLUMNS)
    by_arch = {(r["library"], r["architecture"]): r for r in rows}
    cait = by_arch[("timm", "cait")]
    assert int(cait["sites"]) > 0 and cait["fused"] == cait["sites"] and cait["fully_fused"] == "True"
    eff = by_arch[("timm", "efficientnet")]
    assert int(eff["never"]) > 0 and eff["fully_fused"] == "True"  # blocks without a shortcut: never run
    meta = by_arch[("timm", "metaformer")]
    assert meta["fully_fused"] == "False" and "scale after drop path" in meta["reasons"]
    if ("transformers", "dinov2") in by_arch:
        assert by_arch[("transformers", "dinov2")]["fully_fused"] == "True"
        pool = by_arch[("transformers", "poolformer")]
        assert pool["fully_fused"] == "False" and pool["reasons"]
    text = open(tmp_path / "zoo-sample.txt").read()
    assert "timm:" in text and "architectures with drop path fully fused" in text
    assert os.path.getsize(tmp_path / "zoo-sample.csv") > 0
