"""Fast checks of the guided-tour notebooks without running them (CI runs them with nbmake).

Every notebook must be valid nbformat, be stored with its outputs cleared, start with a
parameters cell that reads HARMONIZE_NOTEBOOK_PROFILE (default "quick"), import only harmonize,
the standard library, numpy, pandas and matplotlib, and match tools/make_notebooks.py.
"""
import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = ("01_data_and_variability.ipynb", "02_train_experiment.ipynb", "03_validate.ipynb",
            "04_harmonise_new_scans.ipynb")
ALLOWED_IMPORTS = {"harmonize", "numpy", "pandas", "matplotlib"} | set(sys.stdlib_module_names)
FIRST_PERSON = re.compile(r"\b(I|we|We|our|Our|us)\b")


def _read(name):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _python(source):
    """Cell source without IPython magics and shell lines (which ast cannot parse)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def test_the_four_notebooks_are_there():
    found = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert found == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_valid_nbformat(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", EXPECTED)
def test_outputs_cleared(name):
    for cell in _code_cells(_read(name)):
        assert cell.outputs == [], f"{name}: a code cell has stored outputs; clear them before committing"
        assert cell.execution_count is None, f"{name}: a code cell has an execution count; clear outputs"
    assert "widgets" not in _read(name).metadata


@pytest.mark.parametrize("name", EXPECTED)
def test_starts_with_a_parameters_cell(name, monkeypatch):
    nb = _read(name)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), \
        f"{name}: the first cell is the title"
    first = _code_cells(nb)[0]
    assert "parameters" in first.metadata.get("tags", []), f"{name}: the first code cell must be tagged 'parameters'"
    for env, expected in ((None, "quick"), ("ci", "ci"), ("thesis", "thesis")):
        if env is None:
            monkeypatch.delenv("HARMONIZE_NOTEBOOK_PROFILE", raising=False)
        else:
            monkeypatch.setenv("HARMONIZE_NOTEBOOK_PROFILE", env)
        namespace = {}
        exec(compile(_python(first.source), f"{name}:parameters", "exec"), namespace)  # noqa: S102
        assert namespace["PROFILE"] == expected
        assert isinstance(namespace["SEED"], int)


@pytest.mark.parametrize("name", EXPECTED)
def test_imports_only_harmonize_stdlib_numpy_pandas_matplotlib(name):
    for i, cell in enumerate(_code_cells(_read(name))):
        tree = ast.parse(_python(cell.source), filename=f"{name}[{i}]")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import in code cell {i}"
                modules = [node.module]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in ALLOWED_IMPORTS, f"{name}: code cell {i} imports {module}"


@pytest.mark.parametrize("name", EXPECTED)
def test_markdown_voice(name):
    for cell in _read(name).cells:
        if cell.cell_type == "markdown":
            text = re.sub(r"`[^`]*`", "", cell.source)  # code spans may say anything
            match = FIRST_PERSON.search(text)
            context = text[max(0, match.start() - 40):match.end() + 40] if match else ""
            assert match is None, f"{name}: first person in markdown: ...{context}..."


def test_readme_links_every_notebook():
    text = (NOTEBOOK_DIR / "README.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        assert f"]({name})" in text, f"notebooks/README.md does not link {name}"


def test_notebooks_match_their_source():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "tools" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "notebooks/ differ from tools/make_notebooks.py; run it and commit"
