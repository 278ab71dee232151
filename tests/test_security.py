"""Security: no unsafe deserialisation or remote code anywhere in the package (output names: test_paths)."""

from __future__ import annotations

import ast
import inspect
import io
import re
import tokenize
from pathlib import Path

import pytest

import workbench
from workbench.models import _load_hf, load_model

PACKAGE = Path(workbench.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def test_there_is_source_to_scan():
    names = {path.name for path in SOURCES}
    assert {"models.py", "vectors.py", "activations.py", "paths.py"} <= names


def code_names(path: Path) -> set[str]:
    """Identifiers in the code itself (not in strings or comments, so docs may say "never pickle")."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return {token.string for token in tokens if token.type == tokenize.NAME}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_pickle_or_joblib(path):
    assert not code_names(path) & UNSAFE_MODULES
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            assert not {alias.name.split(".")[0] for alias in node.names} & UNSAFE_MODULES
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in UNSAFE_MODULES
        if isinstance(node, ast.Attribute):
            assert node.attr not in {"read_pickle", "to_pickle"}, f"{path}:{node.lineno}"


def calls(path: Path) -> list[tuple[str, ast.Call]]:
    """Every call in ``path`` with its callee written out (``torch.load``, ``AutoModel.from_pretrained``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            found.append((ast.unparse(node.func), node))
    return found


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_unsafe_loads_or_remote_code(path):
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"trust_remote_code\s*=\s*True", text), path
    assert not re.search(r"allow_pickle\s*=\s*True", text), path
    tree = ast.parse(text)
    torch_load = {"torch.load"} | {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "torch"
        for alias in node.names
        if alias.name == "load"
    }
    for callee, call in calls(path):
        where = f"{path.name}:{call.lineno} {callee}"
        if callee in torch_load:
            assert is_true(keyword(call, "weights_only")), f"{where} without weights_only=True"
        assert not is_true(keyword(call, "trust_remote_code")), where
        assert not is_true(keyword(call, "allow_pickle")), where
        assert callee not in {"eval", "exec"}, where
        if callee in {"yaml.load", "yaml.unsafe_load"}:
            pytest.fail(f"{where}: use yaml.safe_load")


def test_torch_load_is_not_used_at_all():
    """Artifacts are safetensors; if torch.load ever appears it must say weights_only=True (checked above)."""
    uses = [p.name for p in SOURCES if "torch.load(" in p.read_text(encoding="utf-8")]
    assert uses == []


def test_trust_remote_code_defaults_to_false():
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    assert "trust_remote_code" in inspect.signature(_load_hf).parameters  # passed through, never hardcoded
