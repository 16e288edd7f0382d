"""`unitscope benchmark` under torchrun: two gloo ranks, each started with the environment torchrun
gives (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; spawned as the other distributed tests
do) and running the command itself, give what one process gives; a rerun recomputes nothing that
was finished (finished entries are loaded, an entry whose dissection finished but whose
dissection.json was not written resumes from its checkpoints without a counted forward). The spec
uses ties="random", whose tie shares are counted per rank and summed."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dissect.test_load_full import assert_equal_dissections
from unitscope import cli
from unitscope.dissect import Dissection

SPEC = """
[dataset]
path = "{root}"

[settings]
batch_size = 5
iou_threshold = 0.02
num_workers = 0
compile = false
ties = "random"
tie_seed = 3

[[models]]
name = "a"
model = "cli_models:counted"
layers = ["0", "2"]

[[models]]
name = "b"
model = "cli_models:counted"
layers = ["3"]
{extra}
"""


def _worker(rank, world, port, spec, out, report):
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)  # as torchrun sets OMP_NUM_THREADS=1
    import cli_models

    from unitscope.dissect import benchmark as bench
    ran = []
    run_entry = bench.run_entry

    def recorded(entry, *a, **k):
        ran.append(entry["name"])
        return run_entry(entry, *a, **k)
    bench.run_entry = recorded
    rc = cli.main(["benchmark", spec, "--out", out, "--quiet"])
    Path(report, f"rank{rank}.json").write_text(json.dumps({"rc": rc, "ran": ran, "calls": cli_models.CALLS[0]}))


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(spec, out, report):
    report.mkdir(exist_ok=True)
    for f in report.iterdir():
        f.unlink()
    mp.spawn(_worker, args=(2, _free_port(), str(spec), str(out), str(report)), nprocs=2)
    return [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_a_rerun_recomputes_nothing(concept_root, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(root=concept_root, extra=""))
    out, report = tmp_path / "two", tmp_path / "report"
    got = _torchrun(spec, out, report)
    assert [g["rc"] for g in got] == [0, 0] and all(g["ran"] == ["a", "b"] for g in got)
    assert sorted(p.name for p in (out / "runs" / "a" / "checkpoints").iterdir()) == \
        ["dissect-rank0of2.pt", "dissect-rank1of2.pt"]
    # one process, same spec
    assert cli.main(["benchmark", str(spec), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    for name in ("a", "b"):
        two, one = Dissection.load(out / "runs" / name), Dissection.load(tmp_path / "one" / "runs" / name)
        two.timings = one.timings  # seconds differ, everything else may not
        assert_equal_dissections(two, one)
        assert two.settings["ties"] == "random"
    assert (one["3"].ties > 0).sum() >= 2 and one["3"].activation_total[one["3"].saturated].sum() > 0  # drawn
    assert (out / "compare.csv").read_text() == (tmp_path / "one" / "compare.csv").read_text()
    # rerun after a kill between b's dissection and its dissection.json: a is loaded, b resumes from
    # its finished checkpoints (each rank runs only the probe), nothing else is touched
    before_b = Dissection.load(out / "runs" / "b")
    (out / "runs" / "b" / "dissection.json").unlink()
    kept = _mtimes(out / "runs" / "a") | _mtimes(out / "runs" / "b" / "checkpoints")
    got = _torchrun(spec, out, report)
    assert [g["rc"] for g in got] == [0, 0] and all(g["ran"] == ["b"] for g in got)
    assert [g["calls"] for g in got] == [1, 1]  # the probe that checks the checkpoint, no counted batch
    after_b = Dissection.load(out / "runs" / "b")
    after_b.timings = before_b.timings
    assert_equal_dissections(after_b, before_b)
    assert {p: t for p, t in _mtimes(out / "runs").items() if p in kept} == kept
    # and once more: both finished, neither dissected, not even probed
    got = _torchrun(spec, out, report)
    assert all(g["ran"] == [] and g["calls"] == 0 for g in got)
