"""`unitscope`: the help of every command and option, the shared argument types, one-line user errors
with exit code 2, `unitscope data concepts` and `unitscope info`."""
import argparse
import filecmp

import pytest

from unitscope import cli


def _parsers(parser, path=("unitscope",)):
    """(command path, parser) for the top-level parser and every (nested) subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def _fails(argv, capsys, message):
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own exit for a bad argument value
        rc = e.code
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err, err
    assert last.startswith(f"unitscope {argv[0]}") and ": error: " in last and message in last, last


def test_top_level_help_is_whole(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    text = " ".join(out.split())
    assert cli.DESCRIPTION in text and cli.DESCRIPTION.endswith(".")
    for name in ("dissect", "saliency", "featviz", "data", "info", "demo"):
        assert f" {name} " in text


COMMAND_PARSERS = list(_parsers(cli.build_parser()))


@pytest.mark.parametrize("path,parser", COMMAND_PARSERS, ids=[" ".join(p) for p, _ in COMMAND_PARSERS])
def test_every_option_says_what_it_does_and_its_default(path, parser):
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        text = formatter._expand_help(action) if action.help else ""
        name = "/".join(action.option_strings) or action.dest
        if len(text.split()) < 2:
            missing.append(f"{name}: no help")
        elif action.option_strings and action.nargs != 0 and not action.required and "default" not in text:
            missing.append(f"{name}: help does not give the default ({text!r})")
    assert not missing, f"{' '.join(path)}: " + "; ".join(missing)


def test_defaults_are_added_once():
    sub = dict(COMMAND_PARSERS)[("unitscope", "dissect")]
    help_text = " ".join(sub.format_help().split())
    assert "per-unit activation quantile used as the unit's threshold (default: 0.995)" in help_text
    assert "(default: OUT/checkpoints) (default" not in help_text
    assert "exact quantiles (the default)" in help_text and "(default: True)" not in help_text


def test_argument_types(tmp_path):
    assert cli.positive_int("3") == 3 and cli.nonnegative_int("0") == 0
    for bad in ("0", "-2", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a positive integer"):
            cli.positive_int(bad)
    unit = cli.float_in(0, 1, open_hi=True)
    assert unit("0") == 0.0
    for bad in ("1", "nan", "-0.1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be a number in \[0, 1\)"):
            unit(bad)
    (tmp_path / "f").write_text("x")
    assert cli.output_dir(str(tmp_path / "new" / "deeper")) == str(tmp_path / "new" / "deeper")
    with pytest.raises(argparse.ArgumentTypeError, match="it names a file"):
        cli.output_dir(str(tmp_path / "f"))
    with pytest.raises(argparse.ArgumentTypeError, match=r"\(.*f is a file\)"):
        cli.output_dir(str(tmp_path / "f" / "sub"))
    assert cli.existing_file(str(tmp_path / "f")) and cli.existing_dir(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="is a directory, expected a file"):
        cli.existing_file(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="is a file, expected a folder"):
        cli.existing_dir(str(tmp_path / "f"))
    assert cli.device("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="not a torch device"):
        cli.device("gpu")


@pytest.mark.parametrize("error", [ValueError("bad value\n  on two lines"), TypeError("bad type"),
                                   FileNotFoundError("no such file"), ImportError("pip install x")])
def test_library_errors_become_one_line(monkeypatch, capsys, error):
    from unitscope import info

    def run(args):
        raise error

    monkeypatch.setattr(info, "run", run)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err == f"unitscope info: error: {' '.join(str(error).split())}\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    from unitscope import info

    def run(args):
        raise RuntimeError("internal")

    monkeypatch.setattr(info, "run", run)
    with pytest.raises(RuntimeError, match="internal"):
        cli.main(["info"])


def test_data_concepts_writes_the_dataset(tmp_path, capsys):
    from unitscope.data import BrodenDataset, make_concept_dataset

    assert cli.main(["data", "concepts", str(tmp_path / "cli"), "--images", "3", "--size", "32", "--seed", "2"]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 images of 32x32" in captured.out and "concept dataset" in captured.err  # the progress bar
    make_concept_dataset(tmp_path / "api", 3, size=32, seed=2, progress=False)
    cmp = filecmp.dircmp(tmp_path / "cli", tmp_path / "api")
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    assert len(BrodenDataset(tmp_path / "cli")) == 3
    assert cli.main(["data", "concepts", str(tmp_path / "q"), "--images", "2", "--size", "16", "--quiet"]) == 0
    assert "concept dataset" not in capsys.readouterr().err


def test_data_concepts_errors(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    _fails(["data", "concepts", str(tmp_path / "d"), "--images", "0"], capsys, "argument --images: must be a positive")
    _fails(["data", "concepts", str(tmp_path / "d"), "--size", "8"], capsys, "argument --size: must be at least 16")
    _fails(["data", "concepts", str(tmp_path / "f")], capsys, "argument DIR: ")
    _fails(["data", "nope", str(tmp_path / "d")], capsys, "invalid choice: 'nope'")
    assert not (tmp_path / "d").exists()


def test_featviz_channel_out_of_range_is_one_line(tmp_path, capsys):
    _fails(["featviz", "--model", "efficientnet_lite0", "--layer", "_bn1", "--channels", "5000", "--steps", "1",
            "--size", "32", "--out", str(tmp_path / "o")], capsys, "channel 5000 is out of range")


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "compiled with CUDA:" in out and "torch" in out and "cpp" in out
