"""The cgroup parent of session containers (convocate_agent.cgroups), against a scratch cgroup tree."""

from convocate_agent.cgroups import CgroupParent, container_cgroup, detect, sessions_tasks_max


def test_detect_follows_dockers_driver(tmp_path):
    assert detect({"CgroupDriver": "systemd", "CgroupVersion": "2"}).docker_value == "convocate-sessions.slice"
    parent = detect({"CgroupDriver": "cgroupfs", "CgroupVersion": "1"}, "convocate-sessions-abcd1234", tmp_path)
    assert parent.docker_value == "/convocate-sessions-abcd1234" and parent.version == 1


def test_cgroupfs_v1_limits_are_written_and_cleaned_up(tmp_path):
    for controller in ("cpu", "memory"):
        (tmp_path / controller).mkdir()
    parent = CgroupParent("cgroupfs", 1, "convocate-sessions", tmp_path)
    assert parent.apply_limits(1.8, 9 << 30)
    assert (tmp_path / "cpu/convocate-sessions/cpu.cfs_quota_us").read_text() == "180000"
    assert (tmp_path / "cpu/convocate-sessions/cpu.cfs_period_us").read_text() == "100000"
    assert (tmp_path / "memory/convocate-sessions/memory.limit_in_bytes").read_text() == str(9 << 30)
    assert container_cgroup(parent, "c1", "cpuacct") == tmp_path / "cpuacct/convocate-sessions/c1"
    for f in (tmp_path / "cpu/convocate-sessions").iterdir():
        f.unlink()
    for f in (tmp_path / "memory/convocate-sessions").iterdir():
        f.unlink()
    parent.cleanup()
    assert not (tmp_path / "cpu/convocate-sessions").exists()


def test_cgroupfs_v2_limits(tmp_path):
    parent = CgroupParent("cgroupfs", 2, "convocate-sessions", tmp_path)
    assert parent.apply_limits(3.6, 1 << 30)
    assert (tmp_path / "convocate-sessions/cpu.max").read_text() == "360000 100000"
    assert (tmp_path / "convocate-sessions/memory.max").read_text() == str(1 << 30)


def test_an_unwritable_parent_is_reported_not_fatal(tmp_path):
    parent = CgroupParent("cgroupfs", 1, "convocate-sessions", tmp_path / "missing")
    assert parent.apply_limits(1.0, 1 << 30) is False


def test_cleanup_sweeps_the_parent_from_every_v1_hierarchy_docker_made_it_in(tmp_path):
    parent = CgroupParent("cgroupfs", 1, "convocate-sessions-abcd1234", tmp_path)
    for hierarchy in ("cpu", "memory", "blkio", "pids", "devices"):
        (tmp_path / hierarchy / parent.name).mkdir(parents=True)
    (tmp_path / "pids" / parent.name / "busy").mkdir()  # a session still there: kept
    (tmp_path / "cpu" / "other-parent").mkdir()
    parent.cleanup()
    assert sorted(p.parent.name for p in tmp_path.glob(f"*/{parent.name}")) == ["pids"]
    assert (tmp_path / "cpu" / "other-parent").is_dir()


def test_the_parent_caps_the_tasks_of_all_sessions(tmp_path):
    for controller in ("cpu", "memory", "pids"):
        (tmp_path / "v1" / controller).mkdir(parents=True)
    assert CgroupParent("cgroupfs", 1, "convocate-sessions", tmp_path / "v1").apply_limits(1.0, 1 << 30, 5000)
    assert (tmp_path / "v1/pids/convocate-sessions/pids.max").read_text() == "5000"
    (tmp_path / "v2").mkdir()
    assert CgroupParent("cgroupfs", 2, "convocate-sessions", tmp_path / "v2").apply_limits(1.0, 1 << 30, 7000)
    assert (tmp_path / "v2/convocate-sessions/pids.max").read_text() == "7000"
    assert (tmp_path / "v2/cgroup.subtree_control").read_text() == "+cpu +memory +pids"


def test_sessions_get_half_of_the_hosts_tasks(tmp_path):
    (tmp_path / "pid_max").write_text("4194304\n")
    (tmp_path / "threads-max").write_text("200000\n")
    assert sessions_tasks_max(tmp_path) == 100000
    assert sessions_tasks_max(tmp_path / "missing") is None
