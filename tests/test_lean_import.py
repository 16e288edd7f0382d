"""A lean `import unitscope.kernels` for embedders (issue 23): no applications, PIL, tqdm, numba or scipy
until used; `import unitscope` loads its heavy subpackages on first use and every public name still
resolves; py.typed, a stub for unitscope._C that matches the module, one __version__ source."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import unitscope

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "unitscope"
HEAVY = ("PIL", "tqdm", "numba", "scipy", "matplotlib", "unitscope.featviz", "unitscope.saliency",
         "unitscope.dissect", "unitscope.explain", "unitscope.data", "unitscope.models", "unitscope.viz")


def _new_modules(code: str) -> list:
    """Modules that `code` imports beyond torch's own (run in a fresh interpreter)."""
    script = ("import sys, json, torch\nbefore = set(sys.modules)\n" + code +
              "\nprint(json.dumps(sorted(set(sys.modules) - before)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", ["import unitscope.kernels", "import unitscope; unitscope.backends(verbose=True)",
                                  "from unitscope.kernels import gradcam, mask_iou, IoUTally"])
def test_kernels_import_without_the_applications(code):
    new = _new_modules(code)
    heavy = [m for m in new if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]
    assert not heavy, heavy
    assert "unitscope.kernels._ops" in new  # the operators are registered on import


def test_lazy_subpackages_still_resolve():
    code = ("import unitscope, unitscope.dissect.capture, types\n"
            "assert isinstance(unitscope.dissect, types.FunctionType), unitscope.dissect\n"
            "import unitscope.explain.run\n"
            "assert isinstance(unitscope.explain, types.FunctionType), unitscope.explain\n"
            "from unitscope import *\n"
            "from unitscope.dissect import dissect as d\n"
            "assert d is unitscope.dissect\n"
            "assert unitscope.saliency.GradCAM and unitscope.featviz and unitscope.viz")
    new = _new_modules(code)
    assert "unitscope.featviz" in new and "unitscope.saliency" in new
    for name in unitscope.__all__:
        assert getattr(unitscope, name) is not None and name in dir(unitscope)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        unitscope.nope  # noqa: B018


def test_py_typed_and_stub_match_the_compiled_module():
    assert (PKG / "py.typed").is_file()
    stub = ast.parse((PKG / "_C.pyi").read_text())
    stubbed = {n.name for n in stub.body if isinstance(n, ast.FunctionDef)}
    stubbed |= {n.target.id for n in stub.body if isinstance(n, ast.AnnAssign)}
    if "cpp" not in unitscope.backends():
        pytest.skip("unitscope._C is not built here")
    C = unitscope._backend.compiled_module()
    public = {n for n in dir(C) if not n.startswith("_")}
    cuda_only = {n for n in stubbed if n.endswith(("_cuda", "_cuda_workspace_ints")) or n == "cuda_probe"}
    assert public - stubbed == set()
    assert stubbed - public <= (set() if C.cuda_compiled() else cuda_only)


def test_one_version_source():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    provider = meta["tool"]["scikit-build"]["metadata"]["version"]
    assert provider["provider"] == "scikit_build_core.metadata.regex"
    text = (ROOT / provider["input"]).read_text()
    assert re.findall(r'__version__\s*=\s*"([^"]+)"', text) == [unitscope.__version__]
    hits = [p for p in PKG.rglob("*.py") if p.name != "_version.py" and unitscope.__version__ in p.read_text()]
    assert not hits, hits  # no second copy of the string


def test_public_kernel_api_is_annotated():
    import inspect

    from unitscope import kernels

    for name in kernels.__all__:
        obj = getattr(kernels, name)
        funcs = [obj] if inspect.isfunction(obj) else [
            f for n, f in vars(obj).items() if inspect.isfunction(f) and (not n.startswith("_") or n == "__init__")]
        for f in funcs:
            sig = inspect.signature(f)
            missing = [p for p in sig.parameters if p != "self" and sig.parameters[p].annotation is inspect._empty]
            assert not missing, f"{name}.{f.__name__}: {missing}"
            assert sig.return_annotation is not inspect._empty, f"{name}.{f.__name__}"
