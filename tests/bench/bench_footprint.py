"""Footprint benchmarks: the agent's memory, and how fast the zipapps start.

- agent RSS idle, and with 100 sessions listed; baseline: a Python process that imports the
  same libraries (asyncssh, docker) and does nothing (what the interpreter alone costs).
- zipapp start, cold (first run: shiv extracts into an empty SHIV_ROOT) and warm; baseline:
  ``python3 -sE -c pass`` (the interpreter's own start).
- ``convocate --help`` and ``version`` warm through the package's launcher
  (``packaging/shiv/wrappers/convocate``, which runs the unpacked tree without shiv's bootstrap),
  beside ``python3 -sE -c pass``; and ``version`` through the pyz (shiv's bootstrap) for the
  bootstrap's own cost (issue 17).
- ``convocate ls`` end to end through the launcher against one agent with one session, with
  status-serve running (its local socket answers) and without (SSH to the agent); baselines:
  ``python3 -sE -c pass`` and a bare Python that reads status-serve's replay from the socket
  (interpreter start + the one socket read: what answering from status-serve cannot avoid).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.bench.common import Figure, connect, scratch_cluster
from tests.conftest import rpc_ok
from tests.harness import REPO, python


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _baseline_rss() -> float:
    proc = subprocess.Popen([python(), "-c", "import asyncssh, docker, sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        time.sleep(1.5)
        return rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return (time.perf_counter() - started) * 1000


def zipapp_figures(pyz: Path, runs: int = 5) -> list[Figure]:
    env = dict(os.environ)
    floor = statistics.median(_timed(["/usr/bin/python3", "-sE", "-c", "pass"], env) for _ in range(runs))
    colds, warms = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as root:
            env["SHIV_ROOT"] = root
            colds.append(_timed(["/usr/bin/python3", "-sE", str(pyz), "version"], env))
            warms.append(statistics.median(_timed(["/usr/bin/python3", "-sE", str(pyz), "version"], env)
                                           for _ in range(3)))
    name = pyz.stem
    return [Figure(f"{name} zipapp start, cold (extracts)", "ms", statistics.median(colds), floor,
                   "python3 -sE -c pass"),
            Figure(f"{name} zipapp start, warm", "ms", statistics.median(warms), floor, "python3 -sE -c pass")]


WRAPPER = REPO / "packaging" / "shiv" / "wrappers" / "convocate"
#: A bare reader of status-serve's replay: the floor of answering ``ls`` from the local socket.
SOCKET_FLOOR = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nb = b''\n"
                "while b'replay.done' not in b:\n    b += s.recv(1 << 20)")


def _launcher(pyz: Path, shiv_root: Path, into: Path) -> Path:
    """The package's ``/usr/bin/convocate`` with its two paths pointed at ``shiv_root`` and ``pyz``."""
    text = WRAPPER.read_text().replace("/usr/lib/convocate/shiv", str(shiv_root))
    path = into / "convocate"
    path.write_text(text.replace("/usr/lib/convocate/convocate.pyz", str(pyz)))
    return path


def _median(argv: list[str], env: dict[str, str], runs: int) -> float:
    return statistics.median(_timed(argv, env) for _ in range(runs))


def launcher_figures(pyz: Path, image: str, runs: int = 11) -> list[Figure]:
    """``convocate --help``, ``version`` and ``ls`` through the launcher, warm (the tree is compiled)."""
    floor_name = "python3 -sE -c pass"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shiv"
        env = {**os.environ, "SHIV_ROOT": str(root)}
        _timed(["/usr/bin/python3", "-sE", str(pyz), "version"], env)  # extracts and compiles, as postinst does
        sh = ["/bin/sh", str(_launcher(pyz, root, Path(tmp)))]
        floor = _median(["/usr/bin/python3", "-sE", "-c", "pass"], env, runs)
        figures = [Figure("convocate --help, warm, launcher", "ms", _median([*sh, "--help"], env, runs), floor,
                          floor_name),
                   Figure("convocate version, warm, launcher", "ms", _median([*sh, "version"], env, runs), floor,
                          floor_name),
                   Figure("convocate version, warm, pyz (shiv bootstrap)", "ms",
                          _median(["/usr/bin/python3", "-sE", str(pyz), "version"], env, runs), floor, floor_name)]
        with scratch_cluster(image, status=True) as cluster:
            cenv = {**cluster.env, "SHIV_ROOT": str(root)}
            subprocess.run([*sh, "new", "fp-ls", "--no-start"], env=cenv, check=True, capture_output=True)
            deadline = time.monotonic() + 30
            while True:  # status-serve lists the agent again after the create's event
                rows = json.loads(subprocess.run([*sh, "ls", "--json"], env=cenv, check=True,
                                                 capture_output=True).stdout)
                if rows and all(r["source"] == "status-serve" for r in rows):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"status-serve never answered ls: {rows}")
                time.sleep(0.2)
            socket_floor = _median(["/usr/bin/python3", "-sE", "-c", SOCKET_FLOOR, str(cluster.paths.status_socket)],
                                   cenv, runs)
            pass_floor = _median(["/usr/bin/python3", "-sE", "-c", "pass"], cenv, runs)
            from_status = _median([*sh, "ls"], cenv, runs)
            cluster.stop_status()
            from_agent = _median([*sh, "ls"], cenv, runs)
            rows = json.loads(subprocess.run([*sh, "ls", "--json"], env=cenv, check=True, capture_output=True).stdout)
            if [r["source"] for r in rows] != ["agent"]:
                raise RuntimeError(f"without status-serve ls did not ask the agent: {rows}")
        socket_name = "python3 reading status-serve's replay from its socket"
        figures += [Figure("convocate ls, 1 agent, from status-serve", "ms", from_status, pass_floor, floor_name),
                    Figure("convocate ls, 1 agent, from status-serve", "ms", from_status, socket_floor, socket_name),
                    Figure("convocate ls, 1 agent, over SSH (no status-serve)", "ms", from_agent, pass_floor,
                           floor_name),
                    Figure("convocate ls, 1 agent, over SSH (no status-serve)", "ms", from_agent, socket_floor,
                           socket_name)]
    return figures


def run(image: str, sessions: int = 100) -> list[Figure]:
    baseline = _baseline_rss()
    with scratch_cluster(image) as cluster:
        assert cluster.process is not None
        time.sleep(1.0)
        idle = rss_mib(cluster.process.pid)

        async def fill() -> None:
            async with connect(cluster) as ssh:
                for i in range(0, sessions, 20):
                    await asyncio.gather(*(rpc_ok(ssh, "create", {"name": f"fp-{i + j}"}) for j in range(20)))
                for _ in range(5):
                    await rpc_ok(ssh, "list")

        asyncio.run(fill())
        loaded = rss_mib(cluster.process.pid)
    figures = [Figure("agent RSS, idle", "MiB", idle, baseline, "python importing asyncssh + docker, idle"),
               Figure(f"agent RSS, {sessions} sessions listed", "MiB", loaded, baseline,
                      "python importing asyncssh + docker, idle")]
    zipapps = REPO / "build" / "zipapps"
    for role in ("convocate-agent", "convocate"):
        pyz = zipapps / f"{role}.pyz"
        if pyz.exists():
            figures += zipapp_figures(pyz)
    if (zipapps / "convocate.pyz").exists():
        figures += launcher_figures(zipapps / "convocate.pyz", image)
    return figures


def run_start(image: str) -> list[Figure]:
    """Only the start-up figures of the ``convocate`` zipapp (``--only start``)."""
    pyz = REPO / "build" / "zipapps" / "convocate.pyz"
    if not pyz.exists():
        raise RuntimeError(f"{pyz} is missing: run ./build.sh zipapps")
    return zipapp_figures(pyz) + launcher_figures(pyz, image)
