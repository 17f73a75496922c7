"""``cnnkit explain --quick``: the report's files and their fields (the full run's Grad-CAM
pointing-game score is recorded in BENCHMARKS.md; a 2-epoch model is not expected to reach it)."""
from __future__ import annotations

import json

from cnnkit import cli
from cnnkit.explain import METHODS


def test_explain_quick_writes_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["explain", "--quick", "--no-progress", "--out", str(out), "--methods",
                     "saliency,grad_cam,occlusion,rise"]) == 0
    assert (out / "explanations.png").stat().st_size > 1000
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["methods"]) == {"saliency", "grad_cam", "occlusion", "rise"}
    for name, r in doc["methods"].items():
        for key in ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc"):
            assert 0.0 <= r[key] <= 1.0, (name, key, r[key])
        assert r["seconds_per_image"] > 0
        assert -1.0 <= r["randomization_spearman_abs"] <= 1.0
    assert "grad_cam" in capsys.readouterr().out


def test_explain_rejects_unknown_method(tmp_path, capsys):
    assert cli.main(["explain", "--quick", "--out", str(tmp_path), "--methods", "gradcam"]) == 2
    assert "gradcam" in capsys.readouterr().err
    assert len(METHODS) == 16
