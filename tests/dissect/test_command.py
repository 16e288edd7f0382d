"""`unitscope dissect` in-process: outputs, weights loading, resume from OUT/checkpoints, errors."""
import json

import cli_models
import numpy as np
import pytest
import torch

import unitscope
from unitscope.cli import main
from unitscope.data import BrodenDataset
from unitscope.dissect import imagenet_preprocess


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
    # (the CLI gives a MODULE:FACTORY model ImageNet normalization; the API's preprocess=None is none)
    d = unitscope.dissect(other, ["0", "2"], BrodenDataset(concept_root), batch_size=7, progress=False,
                          iou_threshold=0.02, preprocess=imagenet_preprocess)
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


def _fails(argv, capsys, message):
    """The command exits with code 2 and prints one line `unitscope dissect: error: ...message...`."""
    try:
        rc = main(["dissect"] + argv)
    except SystemExit as e:  # argparse's own exit for a bad argument value
        rc = e.code
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err, err
    assert last.startswith("unitscope dissect: error: ") and message in last, last


def test_cli_errors(concept_root, tmp_path, capsys):
    base = ["--layers", "0", "--dataset", str(concept_root), "--out", str(tmp_path / "o"), "--quiet", "--workers", "0"]
    tiny = ["--model", "cli_models:tiny"]
    _fails(base + ["--model", "cli_models:nope"], capsys, "has no callable 'nope'")
    _fails(base + ["--model", "no_such_mod:f"], capsys, "cannot import module 'no_such_mod'")
    _fails(base + ["--model", "cli_models:not_a_model"], capsys, "gave a int, not a torch.nn.Module")
    _fails(base + ["--model", "cli_models:"], capsys, "expected MODULE:FACTORY")
    _fails(base + ["--model", "resnet9000"], capsys, "not a registered model (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2) nor MODULE:FACTORY")
    _fails(base + tiny + ["--exact", "--sketch"], capsys, "not allowed with argument")
    _fails(base + tiny + ["--batch-size", "0"], capsys, "argument --batch-size: must be a positive integer, got 0")
    _fails(base + tiny + ["--quantile", "1"], capsys, "argument --quantile: must be a number in (0, 1), got 1")
    _fails(base + tiny + ["--iou-threshold", "-0.1"], capsys, "argument --iou-threshold: must be a number in [0, 1]")
    _fails(base + tiny + ["--workers", "-1"], capsys, "argument --workers: must be an integer >= 0, got -1")
    _fails(base + tiny + ["--union", "all"], capsys,
           "argument --union: invalid choice: 'all' (choose from 'category', 'dataset', 'mask')")
    _fails(base + tiny + ["--weights", str(tmp_path / "no.pt")], capsys, "argument --weights: ")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    _fails(base + tiny + ["--weights", str(tmp_path / "bad.pt")], capsys, "--weights " + str(tmp_path / "bad.pt") + ": cannot load")
    torch.save({"x": torch.zeros(2)}, tmp_path / "other.pt")
    _fails(base + tiny + ["--weights", str(tmp_path / "other.pt")], capsys, "does not fit --model cli_models:tiny")
    (tmp_path / "file").write_text("x")
    _fails(tiny + ["--layers", "0", "--dataset", str(concept_root), "--out", str(tmp_path / "file")], capsys,
           "argument --out: ")
    _fails(tiny + ["--layers", "0", "--dataset", str(tmp_path / "file"), "--out", str(tmp_path / "o")], capsys,
           "argument --dataset: ")
    _fails(base[2:] + tiny + ["--layers", "1,3"], capsys, "layer '3' is not a module of the model")
    _fails(base[2:] + tiny + ["--layers", " , "], capsys, "--layers must name at least one module")
    assert not (tmp_path / "o").exists()  # every error came before any work


def test_cli_dataset_errors_in_one_line(concept_root, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(concept_root, bad)
    (bad / "images" / "generated" / "000005.jpg").unlink()  # found only while the images are read
    _fails(["--model", "cli_models:tiny", "--layers", "0", "--dataset", str(bad), "--out", str(tmp_path / "o"),
            "--workers", "0", "--quiet"], capsys, "missing file")


def test_cli_misspelled_layer_of_a_real_model(concept_root, tmp_path, capsys):
    _fails(["--model", "efficientnet_lite0", "--layers", "_block.10", "--dataset", str(concept_root), "--out",
            str(tmp_path / "o"), "--workers", "0", "--quiet"], capsys, "similar names: _blocks.10")


def test_model_module_never_shadows_libraries(concept_root, tmp_path):
    """--model MODULE:FACTORY from the working directory: the module and its siblings import, a planted
    matplotlib.py beside them does not (the report imports the real one), sys.path is left as it was."""
    import subprocess
    import sys
    from pathlib import Path

    work = tmp_path / "work"
    work.mkdir()
    (work / "matplotlib.py").write_text("raise SystemExit('planted matplotlib.py ran')\n")
    (work / "mylayers.py").write_text("import torch\nWIDTH = 4\n")
    (work / "mynet.py").write_text(
        "import torch\nimport mylayers\n\n\ndef make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, mylayers.WIDTH, 5, stride=4, padding=2), torch.nn.ReLU())\n")
    code = ("import sys; before = list(sys.path); from unitscope.cli import main; "
            f"rc = main(['dissect', '--model', 'mynet:make', '--layers', '1', '--dataset', {str(concept_root)!r}, "
            "'--out', 'out', '--workers', '0', '--quiet', '--report-units', '2']); "
            "assert sys.path == before, (before, sys.path); import matplotlib; "
            "assert 'planted' not in open(matplotlib.__file__).read(); sys.exit(rc)")
    python = Path(sys.executable)
    env = {"PYTHONPATH": str(Path(__file__).parents[2] / "python"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    # -P: Python itself does not put the working directory on sys.path (as with the installed `unitscope`)
    done = subprocess.run([str(python), "-P", "-c", code], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "out" / "report" / "index.html").is_file() and (work / "out" / "tally_1.csv").is_file()


def test_cli_final_progress_line_once(concept_root, tmp_path, capsys):
    """Progress bars written to a log (stderr is not a terminal here): each bar's final line once."""
    assert main(["dissect", "--model", "cli_models:slow", "--layers", "0", "--dataset", str(concept_root),
                 "--out", str(tmp_path / "o"), "--workers", "0", "--batch-size", "5", "--no-report"]) == 0
    lines = [l for l in capsys.readouterr().err.replace("\r", "\n").splitlines() if l.strip()]
    for bar in ("dissect: thresholds", "dissect: tally"):
        assert len([l for l in lines if l.startswith(bar) and "100%" in l]) == 1, lines


def test_cli_registry_model(concept_root, tmp_path):
    models = pytest.importorskip("unitscope.models")
    out = tmp_path / "out"
    model = models.load("efficientnet_lite0").model
    layer = next(n for n, _ in model.named_modules() if n.endswith("blocks.2"))
    assert main(["dissect", "--model", "efficientnet_lite0", "--layers", layer, "--dataset", str(concept_root),
                 "--out", str(out), "--quiet", "--workers", "0", "--no-report"]) == 0
    text = (out / f"tally_{layer}.csv").read_text().splitlines()
    assert len(text) == 1 + 24 and text[0].startswith("unit,category,label,score")


def test_cli_ties_random_equals_the_api(concept_root, tmp_path, capsys):
    """--ties random --tie-seed 3 gives what dissect(ties='random', tie_seed=3) gives; the rule is in
    dissection.json; a bad value is a one-line user error."""
    out = tmp_path / "out"
    assert main(["dissect", "--model", "cli_models:tiny", "--layers", "1", "--dataset", str(concept_root), "--out",
                 str(out), "--workers", "0", "--quiet", "--no-report", "--ties", "random", "--tie-seed", "3"]) == 0
    from unitscope.dissect import Dissection
    saved = Dissection.load(out)["1"]
    d = unitscope.dissect(cli_models.tiny(), ["1"], BrodenDataset(concept_root), progress=False, ties="random",
                          tie_seed=3, preprocess=imagenet_preprocess)["1"]
    assert saved.settings["ties"] == "random" and saved.settings["tie_seed"] == 3
    assert saved.activation_total.tobytes() == d.activation_total.tobytes()
    assert saved.intersection.tobytes() == d.intersection.tobytes()
    base = ["--layers", "1", "--dataset", str(concept_root), "--out", str(tmp_path / "o"), "--quiet"]
    _fails(base + ["--model", "cli_models:tiny", "--ties", "maybe"], capsys, "--ties")
    _fails(base + ["--model", "cli_models:tiny", "--tie-seed", "-1"], capsys, "--tie-seed")
