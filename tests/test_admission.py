"""Admission control arithmetic and its lock (convocate_agent.admission)."""

import asyncio

import pytest

from convocate.common.errors import AdmissionDenied
from convocate_agent.admission import Admission, HostResources, Reservation, check_admission

HOST = HostResources(cpus=4.0, memory_mb=10000)  # limits: 3.6 cores, 9000 MiB


def test_limits_are_ninety_percent():
    assert HOST.limits == Reservation(3.6, 9000)


def test_fits_exactly_at_the_limit():
    check_admission(HOST, Reservation(3.0, 8000), Reservation(0.6, 1000))


def test_cpu_refusal_names_axis_and_figures():
    with pytest.raises(AdmissionDenied) as e:
        check_admission(HOST, Reservation(3.5, 0), Reservation(0.5, 10))
    assert e.value.message == ("admission denied: cpus asked 0.5 cores, reserved 3.5 cores, allowed 3.6 cores "
                               "(90% of 4 cores on this host)")
    assert e.value.code == "admission_denied"


def test_memory_refusal():
    with pytest.raises(AdmissionDenied, match="memory asked 1001 MiB, reserved 8000 MiB, allowed 9000 MiB"):
        check_admission(HOST, Reservation(0, 8000), Reservation(0.1, 1001))


def test_probe_reads_this_host():
    host = HostResources.probe()
    assert host.cpus >= 1 and host.memory_mb > 0


def test_concurrent_admissions_never_overcommit():
    async def scenario():
        running: dict[str, Reservation] = {}

        async def list_running():
            await asyncio.sleep(0)  # a Docker query yields to the loop
            return dict(running)

        admission = Admission(HOST, list_running)
        admitted, refused = [], []

        async def start(i):
            sid = f"s{i}"
            try:
                async with admission.admit(sid, Reservation(1.0, 100)):
                    await asyncio.sleep(0.01)  # the container starts
                    running[sid] = Reservation(1.0, 100)
                admitted.append(sid)
            except AdmissionDenied:
                refused.append(sid)

        await asyncio.gather(*(start(i) for i in range(10)))
        return admitted, refused, running

    admitted, refused, running = asyncio.run(scenario())
    assert len(admitted) == 3 and len(refused) == 7  # floor(3.6 / 1.0)
    assert sum(r.cpus for r in running.values()) <= HOST.limits.cpus


def test_a_restart_does_not_count_the_sessions_own_reservation():
    async def scenario():
        async def list_running():
            return {"a": Reservation(3.0, 100)}

        admission = Admission(HOST, list_running)
        async with admission.admit("a", Reservation(3.5, 100)):
            return True

    assert asyncio.run(scenario())


def test_memory_used_outside_the_sessions_counts_against_the_limit():
    from convocate_agent.admission import outside_memory_mb

    meminfo = {"MemTotal": 10000 * 1024, "MemAvailable": 7000 * 1024}  # 3000 MiB in use
    assert outside_memory_mb(1000 << 20, meminfo) == 2000  # of which 1000 MiB are the sessions'
    assert outside_memory_mb(None, meminfo) == 3000
    assert outside_memory_mb(5000 << 20, meminfo) == 0
    check_admission(HOST, Reservation(0, 6000), Reservation(0.1, 1000), outside_mb=2000)
    with pytest.raises(AdmissionDenied, match=r"reserved 6000 MiB \(\+2001 MiB used outside convocate\)"):
        check_admission(HOST, Reservation(0, 6000), Reservation(0.1, 1000), outside_mb=2001)
