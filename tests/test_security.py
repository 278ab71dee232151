"""Security: no unsafe deserialisation or remote code in the package, and output names that cannot escape."""

from __future__ import annotations

import ast
import inspect
import io
import os
import re
import tokenize
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import workbench
from workbench.errors import InvalidArgumentError, OutputPathError
from workbench.models import _load_hf, load_model
from workbench.paths import MAX_NAME, check_writable, safe_child, slugify

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


# ---- output names from data ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("json_format", "json_format"),
        ("italian/en_answer_it", "italian_en_answer_it"),
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("/etc/passwd", "_etc_passwd"),
        ("C:\\Windows\\system32", "C__Windows_system32"),
        ("~root", "_root"),
        ("a\x00b", "a_b"),
        ("perché sì", "perch__s_"),
        ("...", "..."),
        (" ", "_"),
        ("v1.2-final.parquet", "v1.2-final.parquet"),
    ],
)
def test_safe_child_examples(run_dir, name, expected):
    assert safe_child(run_dir, name) == run_dir / expected


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_safe_child_refuses_names_that_are_not_files(run_dir, name):
    with pytest.raises(OutputPathError) as info:
        safe_child(run_dir, name)
    assert "\n" not in str(info.value)


def test_safe_child_refuses_a_symlink_out_of_the_run_dir(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "escape").symlink_to(outside / "loot")
    (run / "self").symlink_to(run)
    with pytest.raises(OutputPathError, match="outside the run directory"):
        safe_child(run, "escape")
    with pytest.raises(OutputPathError):
        safe_child(run, "self")
    (run / "inner").mkdir()
    (run / "ok").symlink_to(run / "inner" / "file")
    assert safe_child(run, "ok") == run / "ok"


def test_safe_child_refuses_non_text(run_dir):
    with pytest.raises(InvalidArgumentError):
        safe_child(run_dir, None)  # type: ignore[arg-type]


def test_long_names_are_cut_and_stay_distinct(run_dir):
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(slugify(a)) == len(slugify(b)) == MAX_NAME
    assert safe_child(run_dir, a) != safe_child(run_dir, b)
    (safe_child(run_dir, a)).write_text("fits in a file name")


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=300))
def test_arbitrary_text_never_escapes(run_dir, name):
    try:
        child = safe_child(run_dir, name)
    except OutputPathError as e:
        assert "\n" not in str(e)
        assert slugify(name) in ("", ".", "..")
        return
    assert child.parent == run_dir
    assert re.fullmatch(r"[A-Za-z0-9._-]+", child.name) and len(child.name) <= MAX_NAME
    assert child.name not in (".", "..")
    assert child.resolve().parent == run_dir.resolve()


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.sampled_from(["..", ".", "/", "\\", "a", "~", "\x00", "%2e", ""]), max_size=8))
def test_traversal_fragments_never_escape(run_dir, parts):
    name = "".join(parts)
    try:
        child = safe_child(run_dir, name)
    except OutputPathError:
        return
    assert child.parent == run_dir and os.sep not in child.name


def test_check_writable(tmp_path):
    assert (
        check_writable(tmp_path / "new" / "deeper" / "v.safetensors")
        == tmp_path / "new" / "deeper" / "v.safetensors"
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_writable(blocker / "sub" / "v.safetensors")
    with pytest.raises(OutputPathError, match="is a directory"):
        check_writable(tmp_path)
