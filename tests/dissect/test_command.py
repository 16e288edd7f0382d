"""`unitscope dissect` in-process: outputs, weights loading, resume from OUT/checkpoints, errors."""
import json

import numpy as np
import pytest
import torch

import unitscope
from unitscope.cli import main
from unitscope.data import BrodenDataset

import cli_models


def test_cli_writes_csv_json_report_and_loads_weights(concept_root, tmp_path, capsys):
    other = cli_models.tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.5)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "out"
    rc = main(["dissect", "--model", "cli_models:tiny", "--weights", str(tmp_path / "w.pt"), "--layers", "0,2",
               "--dataset", str(concept_root), "--out", str(out), "--workers", "0", "--batch-size", "7",
               "--quiet", "--iou-threshold", "0.02"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "0: 8 units" in printed
    assert (out / "tally_0.csv").is_file() and (out / "tally_2.csv").is_file()
    assert (out / "report" / "index.html").is_file() and (out / "report" / "2.html").is_file()
    data = json.loads((out / "dissection.json").read_text())
    # same numbers as the Python API on the model with those weights
    d = unitscope.dissect(other, ["0", "2"], BrodenDataset(concept_root), batch_size=7, progress=False,
                          iou_threshold=0.02)
    best = {u["unit"]: u["iou"] for u in data["layers"][1]["units"]}
    assert np.allclose([best[k] for k in range(6)], d["2"].best_iou)
    with open(out / "tally_2.csv", newline="", encoding="utf-8") as f:  # CRLF lines, as written
        assert f.read() == d["2"].to_csv()
    # a rerun finds the finished checkpoint and gives the same files
    before = (out / "tally_0.csv").read_text()
    assert main(["dissect", "--model", "cli_models:tiny", "--weights", str(tmp_path / "w.pt"), "--layers", "0,2",
                 "--dataset", str(concept_root), "--out", str(out), "--workers", "0", "--batch-size", "7",
                 "--quiet", "--iou-threshold", "0.02", "--no-report"]) == 0
    assert (out / "tally_0.csv").read_text() == before


def test_cli_errors(concept_root, tmp_path):
    base = ["dissect", "--layers", "0", "--dataset", str(concept_root), "--out", str(tmp_path), "--quiet",
            "--workers", "0"]
    with pytest.raises(SystemExit, match="has no callable 'nope'"):
        main(base + ["--model", "cli_models:nope"])
    with pytest.raises(SystemExit, match="cannot import module 'no_such_mod'"):
        main(base + ["--model", "no_such_mod:f"])
    with pytest.raises(SystemExit, match="not a torch.nn.Module"):
        main(base + ["--model", "cli_models:not_a_model"])
    with pytest.raises(SystemExit):
        main(base + ["--model", "cli_models:tiny", "--exact", "--sketch"])


def test_cli_registry_model(concept_root, tmp_path):
    models = pytest.importorskip("unitscope.models")
    out = tmp_path / "out"
    model = models.load("efficientnet_lite0").model
    layer = next(n for n, _ in model.named_modules() if n.endswith("blocks.2"))
    assert main(["dissect", "--model", "efficientnet_lite0", "--layers", layer, "--dataset", str(concept_root),
                 "--out", str(out), "--quiet", "--workers", "0", "--no-report"]) == 0
    text = (out / f"tally_{layer}.csv").read_text().splitlines()
    assert len(text) == 1 + 24 and text[0].startswith("unit,category,label,score")
