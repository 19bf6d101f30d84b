"""The package as a maintainer publishes it: one source for the version, every third-party import
declared, and (slow: it builds) a wheel and an sdist that hold the package, py.typed and LICENSE
but no tests, with metadata PyPI accepts (known classifiers, an SPDX license expression and no
deprecated license classifier).

Installing the wheel alone into a fresh virtualenv and running the demo from outside the
repository is .ci/run's packaging step, not a test: it needs a virtualenv and the network."""
from __future__ import annotations

import ast
import email
import importlib.metadata
import importlib.util
import os
import re
import runpy
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest

import peewee_kvcache

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "peewee_kvcache"
VERSION_FILE = PACKAGE / "_version.py"
#: third-party modules only an optional feature imports, and the extra that declares them
OPTIONAL = {"psycopg2": "postgres",  # the PostgreSQL databases (and their NOTIFY listener)
            "pytest": "test"}  # testing/pytest_plugin.py, for applications' own pytest suites


def setup_arguments(monkeypatch: pytest.MonkeyPatch) -> Dict[str, Any]:
    """What setup.py passes to ``setup()``, without building anything (nor needing setuptools,
    which a virtualenv of Python 3.12+ lacks)."""
    seen: Dict[str, Any] = {}
    stand_in = types.SimpleNamespace(setup=seen.update, find_packages=lambda **_: [])
    monkeypatch.setitem(sys.modules, "setuptools", stand_in)
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    return seen


def distribution_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]


def third_party_imports() -> Dict[str, Set[str]]:
    """Top-level module -> the package files importing it, for every import outside the standard
    library and the package itself."""
    found: Dict[str, Set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "peewee_kvcache" and not is_stdlib(top):
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def is_stdlib(module: str) -> bool:
    if hasattr(sys, "stdlib_module_names"):  # Python 3.10+
        return module in sys.stdlib_module_names
    spec = importlib.util.find_spec(module)
    return spec is not None and (spec.origin in ("built-in", "frozen") or
                                 "site-packages" not in (spec.origin or ""))


def modules_of(distribution: str) -> Set[str]:
    """The top-level modules an installed distribution provides."""
    files = importlib.metadata.distribution(distribution).files or []
    return {file.parts[0][:-3] if file.parts[0].endswith(".py") else file.parts[0]
            for file in files if len(file.parts) > 1 or file.suffix == ".py"}


def test_the_version_is_written_only_in_version_py(monkeypatch):
    namespace = runpy.run_path(str(VERSION_FILE))
    assert setup_arguments(monkeypatch)["version"] == namespace["__version__"]
    assert peewee_kvcache.__version__ == namespace["__version__"]
    written = [str(path.relative_to(ROOT)) for path in [ROOT / "setup.py", *PACKAGE.rglob("*.py")]
               if writes_a_version(path)]
    assert written == ["peewee_kvcache/_version.py"]


def writes_a_version(path: Path) -> bool:
    """Whether the file gives ``__version__`` or ``version`` a string literal (an assignment or a
    keyword argument)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            pairs = [(name, node.value) for name in names]
        elif isinstance(node, ast.keyword):
            pairs = [(node.arg, node.value)]
        else:
            continue
        if any(name in ("__version__", "version") and isinstance(value, ast.Constant)
               and isinstance(value.value, str) for name, value in pairs):
            return True
    return False


def test_the_changelog_has_an_entry_for_the_version():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    changelog = readme.split("## Changelog", 1)[1]
    assert f"### {peewee_kvcache.__version__}\n" in changelog


def test_every_third_party_import_is_declared(monkeypatch):
    arguments = setup_arguments(monkeypatch)
    runtime = {distribution_name(r) for r in arguments["install_requires"]}
    extras = {name: {distribution_name(r) for r in requirements}
              for name, requirements in arguments["extras_require"].items()}
    provided = {module for distribution in runtime for module in modules_of(distribution)}
    undeclared = {}
    for module, paths in third_party_imports().items():
        if module in OPTIONAL:
            extra = OPTIONAL[module]
            declared = {m for d in extras.get(extra, ()) for m in modules_of(d)}
            if module not in declared:
                undeclared[module] = f"not in the {extra!r} extra ({sorted(paths)})"
        elif module not in provided:
            undeclared[module] = f"not in install_requires ({sorted(paths)})"
    assert not undeclared, undeclared


def test_no_optional_module_is_a_runtime_requirement(monkeypatch):
    """A module listed as optional must not be required at install time (or the list is stale)."""
    runtime = {distribution_name(r) for r in setup_arguments(monkeypatch)["install_requires"]}
    provided = {module for distribution in runtime for module in modules_of(distribution)}
    assert not provided & set(OPTIONAL)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    if importlib.util.find_spec("build") is None:
        message = "the build package is missing: pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("dist")
    # (tox's PYTHONDONTWRITEBYTECODE would make setuptools warn that it compiles nothing)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=280, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    warnings = [line for line in output.splitlines()
                if re.search(r"warn|deprecat|no previously-included", line, re.I)]
    assert not warnings, warnings
    wheel, = out.glob("*.whl")
    sdist, = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def wheel_files(wheel: Path) -> List[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name, = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


@pytest.mark.slow
def test_the_wheel_holds_the_package_typed_and_licensed_and_no_tests(built):
    names = wheel_files(built["wheel"])
    assert "peewee_kvcache/py.typed" in names
    assert "peewee_kvcache/_version.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert {n.split("/")[0] for n in names} == {
        "peewee_kvcache", f"peewee_kvcache-{peewee_kvcache.__version__}.dist-info"}
    in_repo = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert in_repo <= set(names), in_repo - set(names)  # every subpackage was found


@pytest.mark.slow
def test_the_wheel_metadata_is_what_pypi_accepts(built, monkeypatch):
    trove_classifiers = pytest.importorskip("trove_classifiers")
    metadata = wheel_metadata(built["wheel"])
    arguments = setup_arguments(monkeypatch)
    assert metadata["Version"] == peewee_kvcache.__version__
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    classifiers = metadata.get_all("Classifier")
    assert classifiers and set(classifiers) <= trove_classifiers.classifiers, classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the expression says it
    runtime = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert sorted(distribution_name(r) for r in runtime) == sorted(
        distribution_name(r) for r in arguments["install_requires"])
    assert metadata["Requires-Python"] == ">=3.9"
    assert metadata.get_payload().startswith("# peewee_kvcache")  # the README, as markdown
    assert metadata["Description-Content-Type"] == "text/markdown"


@pytest.mark.slow
def test_the_sdist_builds_the_same_package_and_holds_the_license(built):
    with tarfile.open(built["sdist"]) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    assert {"LICENSE", "README.md", "setup.py", "pyproject.toml", "peewee_kvcache/py.typed",
            "peewee_kvcache/_version.py"} <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]
    # the KV gateway Worker, ready to deploy, without any installed npm package
    assert {"worker/src/index.js", "worker/wrangler.toml.example", "worker/package.json",
            "worker/package-lock.json"} <= set(names)
    assert not [n for n in names if n.startswith("worker/node_modules")]
