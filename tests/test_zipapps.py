"""The role zipapps as the .debs ship them: unpacked at build time, for Python 3.11, 3.12 and 3.13 (issue 13).

- Each .deb carries ``/usr/lib/<pkg>/<pkg>.pyz`` and its site-packages unpacked in
  ``/usr/lib/<pkg>/shiv/<pkg>.pyz_<build id>/site-packages``: exactly the zip's files, no ``.pyc``; the
  wrapper and the units set ``SHIV_ROOT`` to ``/usr/lib/<pkg>/shiv``, and nothing names ``/var/cache``.
- Every zipapp runs its role's smoke test (entry module, an ed25519 key with cryptography, cffi's
  backend, asyncssh, docker for the agent, npyscreen for the shell, ``version``) under the system
  ``/usr/bin/python3`` (3.11) and pyenv's 3.12 and 3.13, with ``SHIV_ROOT`` on that tree made read-only
  (a read-only bind mount in a private mount namespace when run as root, whom file modes do not stop,
  on top of ``chmod a-w``); the tree and ``$HOME`` are the same afterwards.
- The postinst's byte-compilation (``compileall``) succeeds under every interpreter and the prerm's
  removal of ``__pycache__`` gives back the shipped tree (the commands are in :data:`COMPILE` and
  :data:`CLEAN`, for the maintainer scripts).
- Depends allows exactly those interpreters; the per-version merge refuses trees that disagree.

The .debs are built once per run (the ``debs`` fixture, ``./build.sh debs``) and unpacked with dpkg-deb.
An interpreter that cannot be found fails the test, naming where it was looked for: it is never skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from convocate.common.version import __version__
from tests.systemd_hosts import PACKAGES, REPO, run

pytestmark = pytest.mark.slow

PYTHONS = ("3.11", "3.12", "3.13")
BUILD_ZIPAPPS = REPO / "packaging" / "shiv" / "build-zipapps"
MERGE = REPO / "packaging" / "shiv" / "merge_site_packages.py"
#: What the postinst runs for PACKAGE (``{root}`` is ``/usr/lib/PACKAGE/shiv`` on a host).
COMPILE = ["-sE", "-m", "compileall", "-q", "-j0", "{root}"]
#: What the prerm runs (``find`` arguments).
CLEAN = ["{root}", "-type", "d", "-name", "__pycache__", "-prune", "-exec", "rm", "-rf", "{}", "+"]

#: Per package: the modules its smoke test imports besides cryptography, cffi and asyncssh.
ROLE_MODULES = {
    "convocate": ("convocate.cli", "convocate.status_server", "npyscreen"),
    "convocate-agent": ("convocate_agent.cli", "convocate_agent.server", "docker", "charset_normalizer.md"),
    "convocate-host": ("convocate_host.cli",),
}

SMOKE = """\
import importlib, json, sys
import asyncssh, cffi, _cffi_backend
from cryptography.hazmat.primitives.asymmetric import ed25519
key = ed25519.Ed25519PrivateKey.generate()
key.public_key().verify(key.sign(b"convocate"), b"convocate")
assert cffi.FFI().new("int *", 1337)[0] == 1337
files = {"_cffi_backend": _cffi_backend.__file__, "asyncssh": asyncssh.__file__}
for name in sys.argv[1:]:
    files[name] = importlib.import_module(name).__file__
print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "files": files}))
"""


# --- interpreters ---------------------------------------------------------------------------------------
def pyenv_roots() -> list[Path]:
    """Where pyenv's interpreters may be: ``pyenv root``, then ``$PYENV_ROOT``, then ``~/.pyenv``."""
    roots = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        result = subprocess.run([pyenv, "root"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            roots.append(Path(result.stdout.strip()))
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    roots.append(Path.home() / ".pyenv")
    return list(dict.fromkeys(roots))


def interpreter(version: str) -> Path:
    """The interpreter for ``version``: ``/usr/bin/python3`` for 3.11, else pyenv's newest ``version.*``.

    Raises:
        pytest.fail.Exception: It is not there; the message says where it was looked for.
    """
    if version == "3.11":
        system = Path("/usr/bin/python3")
        found = subprocess.run([system, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True) if system.exists() else None
        if found is None or found.stdout.strip() != version:
            pytest.fail(f"/usr/bin/python3 is not Python {version} "
                        f"({found.stdout.strip() if found else 'missing'}): this test wants Debian 12's python3")
        return system
    looked = []
    for root in pyenv_roots():
        candidates = sorted(root.glob(f"versions/{version}.*/bin/python3"),
                            key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.parent.name)])
        looked.append(f"{root}/versions/{version}.*/bin/python3")
        if candidates:
            return candidates[-1]
    pytest.fail(f"no Python {version}: looked for {', '.join(looked)} (pyenv root, $PYENV_ROOT, ~/.pyenv); "
                f"install it with `pyenv install {version}`")


# --- the shipped files ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def shipped(debs, tmp_path_factory) -> dict[str, Path]:
    """package -> the root its .deb unpacks into (dpkg-deb -x), with /usr/lib/<pkg>/shiv made ``a-w``."""
    roots = {}
    for package in PACKAGES:
        root = tmp_path_factory.mktemp(f"deb-{package}")
        run(["dpkg-deb", "-x", str(debs[package]), str(root)])
        for path in (root / "usr" / "lib" / package / "shiv").rglob("*"):
            path.chmod(stat.S_IMODE(path.lstat().st_mode) & ~0o222)
        (root / "usr" / "lib" / package / "shiv").chmod(0o555)
        roots[package] = root
    return roots


def build_id(pyz: Path) -> str:
    with zipfile.ZipFile(pyz) as z:
        return json.loads(z.read("environment.json"))["build_id"]


def snapshot(top: Path) -> dict[str, tuple[int, int, float]]:
    """Every path under ``top`` -> (mode, size, mtime): what a write of any kind would change."""
    return {str(p.relative_to(top)): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime)
            for p in [top, *top.rglob("*")]}


@pytest.mark.parametrize("package", PACKAGES)
def test_deb_ships_the_zipapp_with_its_site_packages_unpacked(shipped, package):
    lib = shipped[package] / "usr" / "lib" / package
    pyz = lib / f"{package}.pyz"
    assert sorted(p.name for p in lib.iterdir()) == [f"{package}.pyz", "shiv"]
    assert [p.name for p in (lib / "shiv").iterdir()] == [f"{package}.pyz_{build_id(pyz)}"]
    tree = lib / "shiv" / f"{package}.pyz_{build_id(pyz)}" / "site-packages"
    with zipfile.ZipFile(pyz) as z:
        inside = {i.filename.removeprefix("site-packages/"): i for i in z.infolist()
                  if i.filename.startswith("site-packages/")}
        on_disk = {str(p.relative_to(tree)): p for p in tree.rglob("*") if not p.is_dir()}
        assert sorted(on_disk) == sorted(inside), "the tree is not the zip's site-packages"
        for name, info in inside.items():
            assert on_disk[name].read_bytes() == z.read(info), f"{name} differs from the zip's"
            assert stat.S_IMODE(info.external_attr >> 16) == 0o644
    assert not [n for n in on_disk if n.endswith(".pyc") or "__pycache__" in n]
    # Extension modules for every supported interpreter (cffi is built per version).
    for version in PYTHONS:
        assert f"_cffi_backend.cpython-{version.replace('.', '')}-x86_64-linux-gnu.so" in on_disk, version


@pytest.mark.parametrize("package", PACKAGES)
def test_wrapper_and_units_point_shiv_root_at_the_shipped_tree(shipped, package):
    root = shipped[package]
    wrapper = (root / "usr" / "bin" / package).read_text()
    assert f"\nSHIV_ROOT=/usr/lib/{package}/shiv\n" in wrapper
    units = sorted((root / "lib" / "systemd" / "system").glob("*.service")) if package != "convocate-host" else []
    for unit in units:
        text = unit.read_text()
        if f"/usr/lib/{package}/{package}.pyz" in text:
            assert f"\nEnvironment=SHIV_ROOT=/usr/lib/{package}/shiv\n" in text, unit.name
    assert package == "convocate-host" or any(f"{package}.pyz" in u.read_text() for u in units)
    for text in [wrapper, *(u.read_text() for u in units)]:
        assert "/var/cache" not in text


@pytest.mark.parametrize("package", PACKAGES)
def test_depends_allows_python_3_11_to_3_13(debs, package):
    depends = run(["dpkg-deb", "-f", str(debs[package]), "Depends"]).stdout
    assert depends.startswith("python3 (>= 3.11~), python3 (<< 3.14), "), depends
    assert run([str(BUILD_ZIPAPPS), "--python-depends"]).stdout == "python3 (>= 3.11~), python3 (<< 3.14)\n"
    assert "libc6 (>= " in depends  # ${shlibs:Depends}: the bundled extension modules link libc


# --- running them --------------------------------------------------------------------------------------------
def run_read_only(python: Path, pyz: Path, shiv_root: Path, args: list[str], home: Path,
                  **env: str) -> subprocess.CompletedProcess:
    """``python -sE pyz args`` with ``SHIV_ROOT=shiv_root`` and that tree read-only even for root."""
    command = [str(python), "-sE", str(pyz), *args]
    if os.geteuid() == 0:
        # A private mount namespace with the tree bound read-only over itself (EROFS for root too).
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                   'mount --bind -o ro "$0" "$0"; exec "$@"', str(shiv_root), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=home,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "SHIV_ROOT": str(shiv_root), **env})
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


@pytest.mark.parametrize("version", PYTHONS)
@pytest.mark.parametrize("package", PACKAGES)
def test_zipapp_runs_from_the_read_only_tree(shipped, tmp_path, package, version):
    python = interpreter(version)
    lib = shipped[package] / "usr" / "lib" / package
    pyz, shiv_root = lib / f"{package}.pyz", lib / "shiv"
    tree = shiv_root / f"{package}.pyz_{build_id(pyz)}" / "site-packages"
    home = tmp_path / "home"
    home.mkdir()
    before = snapshot(lib)

    smoke = run_read_only(python, pyz, shiv_root, ["-c", SMOKE, *ROLE_MODULES[package]], home, SHIV_INTERPRETER="1")
    report = json.loads(smoke.stdout)
    assert report["version"] == version
    tag = f".cpython-{version.replace('.', '')}-x86_64-linux-gnu.so"
    assert report["files"]["_cffi_backend"] == str(tree / f"_cffi_backend{tag}")
    for module, path in report["files"].items():
        assert path.startswith(f"{tree}/"), f"{module} came from {path}, not from the shipped tree"
    if package == "convocate-agent":  # charset-normalizer's mypyc build for this version, not its pure fallback
        assert report["files"]["charset_normalizer.md"].endswith(tag)

    version_line = run_read_only(python, pyz, shiv_root, ["version"], home)
    assert version_line.stdout.strip() == f"{package} version v{__version__}"
    assert snapshot(lib) == before, "something was written under /usr/lib/" + package
    assert list(home.iterdir()) == [], "something was written into $HOME (a ~/.shiv extraction?)"


@pytest.mark.parametrize("version", PYTHONS)
def test_postinst_compile_and_prerm_clean_leave_the_shipped_tree(shipped, tmp_path, version):
    python = interpreter(version)
    package = "convocate-agent"  # the largest set of wheels; the others' are subsets of its and the shell's
    shipped_root = shipped[package] / "usr" / "lib" / package / "shiv"
    root = tmp_path / "shiv"
    shutil.copytree(shipped_root, root)
    for path in [root, *root.rglob("*")]:
        path.chmod(stat.S_IMODE(path.lstat().st_mode) | 0o200)
    run([str(python), *(a.replace("{root}", str(root)) for a in COMPILE)])
    tag = f".cpython-{version.replace('.', '')}.pyc"
    compiled = [p for p in root.rglob("*.pyc")]
    assert compiled and all(p.name.endswith(tag) for p in compiled)
    assert len(compiled) == len([p for p in root.rglob("*.py")])
    run(["find", *(a.replace("{root}", str(root)) for a in CLEAN)])
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == \
        sorted(str(p.relative_to(shipped_root)) for p in shipped_root.rglob("*"))


@pytest.mark.parametrize("package", ("convocate", "convocate-agent", "convocate-host"))
def test_the_maintainer_scripts_run_these_commands(package):
    root = f"/usr/lib/{package}/shiv"
    postinst = (REPO / "debian" / f"{package}.postinst").read_text()
    prerm = (REPO / "debian" / f"{package}.prerm").read_text()
    assert "python3 " + " ".join(a.replace("{root}", root) for a in COMPILE) in postinst
    assert "find " + " ".join(a.replace("{root}", root) for a in CLEAN) in prerm


# --- the merge of per-version site-packages ------------------------------------------------------------------
def site(tmp_path: Path, version: str, files: dict[str, str]) -> str:
    top = tmp_path / f"python{version}"
    for name, text in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text(text)
    return f"{version}={top}"


def merge(tmp_path: Path, *trees: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MERGE), str(tmp_path / "merged"), *trees],
                          capture_output=True, text=True)


def wheel(tag: str) -> str:
    return f"Wheel-Version: 1.0\nGenerator: setuptools\nRoot-Is-Purelib: false\nTag: {tag}\n"


def test_merge_keeps_each_versions_extension_modules_and_joins_wheel_tags(tmp_path):
    trees = [site(tmp_path, v, {"pkg/__init__.py": "x = 1\n", f"pkg/_ext.cpython-{v.replace('.', '')}-x86_64-linux-gnu.so":
                               f"ELF {v}", "pkg-1.0.dist-info/WHEEL": wheel(f"cp{v.replace('.', '')}-manylinux_2_17")})
             for v in PYTHONS]
    result = merge(tmp_path, *trees)
    assert result.returncode == 0, result.stderr
    merged = tmp_path / "merged"
    assert sorted(p.name for p in (merged / "pkg").iterdir()) == [
        "__init__.py", "_ext.cpython-311-x86_64-linux-gnu.so", "_ext.cpython-312-x86_64-linux-gnu.so",
        "_ext.cpython-313-x86_64-linux-gnu.so"]
    assert (merged / "pkg-1.0.dist-info" / "WHEEL").read_text().splitlines()[-3:] == [
        "Tag: cp311-manylinux_2_17", "Tag: cp312-manylinux_2_17", "Tag: cp313-manylinux_2_17"]


@pytest.mark.parametrize("case, expected", [
    ("different bytes", "pkg/mod.py: Python 3.11 and 3.13 have different contents"),
    ("only in one version", "pkg/extra.py: installed for Python 3.12 but not for 3.11, 3.13"),
    ("abi3 from another wheel", "pkg/_rust.abi3.so: Python 3.11 and 3.12, 3.13 have different contents"),
    ("extension for one version only", "version-tagged extension modules differ"),
    ("wheel of another build", "installed different wheels"),
])
def test_merge_refuses_trees_that_disagree(tmp_path, case, expected):
    trees = []
    for v in PYTHONS:
        files = {"pkg/mod.py": "x = 1\n", "pkg/_rust.abi3.so": "ELF abi3", "pkg-1.0.dist-info/WHEEL": wheel("x")}
        if case == "different bytes" and v == "3.13":
            files["pkg/mod.py"] = "x = 2\n"
        if case == "only in one version" and v == "3.12":
            files["pkg/extra.py"] = ""
        if case == "abi3 from another wheel" and v != "3.11":
            files["pkg/_rust.abi3.so"] = "ELF abi3, another build"
        if case == "extension for one version only" and v == "3.11":
            files["pkg/_speedups.cpython-311-x86_64-linux-gnu.so"] = "ELF"
        if case == "wheel of another build" and v == "3.12":
            files["pkg-1.0.dist-info/WHEEL"] = wheel("x").replace("setuptools", "maturin")
        trees.append(site(tmp_path, v, files))
    result = merge(tmp_path, *trees)
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr
