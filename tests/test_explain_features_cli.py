"""``cnnkit explain features --quick``: the report's files and fields, training and loading the
model, routing beside ``cnnkit explain``, bad options."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cnnkit import cli, models


def _check_report(out, doc_stages=("1", "2", "3", "4")):
    for name in ("channels.png", "neuron_groups.png"):
        assert (out / name).stat().st_size > 5000, name
    doc = json.loads((out / "features.json").read_text())
    assert tuple(doc["channels"]) == doc_stages
    for stage, entry in doc["channels"].items():
        assert len(entry["shown"]) == 2 and entry["seconds"] > 0
        for s in entry["shown"]:
            assert 0 <= s["channel"] < entry["channels"] and np.isfinite(s["objective"])
    groups = doc["neuron_groups"]
    assert groups["layer"] == "3" and len(groups["images"]) == 1
    img = groups["images"][0]
    assert len(img["groups"]) == 2 and 0 <= img["reconstruction_error"] <= 1
    parts = [g["attribution"] for g in img["groups"]] + [img["residual_attribution"]]
    assert abs(sum(parts) - img["total_attribution"]) <= 1e-5 * (sum(map(abs, parts)) + 1e-3)
    for g in img["groups"]:
        assert len(g["direction"]) == 32 and np.isfinite(g["direction_objective"])
    assert doc["seconds"] > 0 and doc["visualization"]["steps"] == 8
    return doc


def test_features_quick_trains_saves_and_reloads(tmp_path, capsys):
    saved = tmp_path / "model.npz"
    out = tmp_path / "trained"
    assert cli.main(["explain", "features", "--quick", "--no-progress", "--out", str(out), "--seed", "3",
                     "--save-model", str(saved)]) == 0
    trained = _check_report(out)
    assert trained["train_seconds"] > 0 and "channels.png" in capsys.readouterr().out
    out2 = tmp_path / "loaded"
    assert cli.main(["explain", "features", "--quick", "--no-progress", "--out", str(out2), "--seed", "3",
                     "--model", str(saved)]) == 0
    loaded = _check_report(out2)
    assert loaded["train_seconds"] is None and loaded["model_path"] == str(saved)
    assert loaded["test_accuracy"] == trained["test_accuracy"]          # the same model on the same data
    assert loaded["neuron_groups"]["images"][0]["groups"][0]["attribution"] == \
        trained["neuron_groups"]["images"][0]["groups"][0]["attribution"]


def test_features_bad_options(tmp_path, capsys):
    assert cli.main(["explain", "features", "--quick", "--out", str(tmp_path), "--model",
                     str(tmp_path / "missing.npz")]) == 2
    assert "--model" in capsys.readouterr().err
    assert cli.main(["explain", "features", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    path = tmp_path / "m.npz"
    models.resnet_small(1, 4, widths=(16, 32, 64), seed=0).save(str(path))
    assert cli.main(["explain", "features", "--quick", "--no-progress", "--out", str(tmp_path), "--model", str(path),
                     "--layer", "nope"]) == 2
    assert "--layer" in capsys.readouterr().err


def test_features_help_and_routing(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["explain", "features", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "neuron_groups.png" in text or "--model" in text
    with pytest.raises(SystemExit) as e:
        cli.main(["explain", "--help"])
    assert e.value.code == 0
    assert "cnnkit explain features --help" in capsys.readouterr().out
