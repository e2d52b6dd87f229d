"""Hosts-file rendering for dnsmasq (convocate.dns), pure."""

from convocate.dns import HostRecord, HostsFile, is_ours, render_hosts

SID1 = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"
SID2 = "0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c"


def test_foreign_lines_are_kept_verbatim_and_ours_replaced():
    current = ("# made by hand\n10.0.0.9   vm-one.c.internal vm-one\n"
               f"10.0.0.1 old.c.internal old # convocate abcd1234 {SID1}\n")
    new = render_hosts(current, [HostRecord("10.0.0.2", "web", "abcd1234", SID1)], "c.internal")
    assert new.splitlines() == ["# made by hand", "10.0.0.9   vm-one.c.internal vm-one",
                                f"10.0.0.2 web.c.internal web # convocate abcd1234 {SID1}"]


def test_records_are_sorted_and_deduplicated():
    records = [HostRecord("10.0.0.3", "b", "agent002", SID2), HostRecord("10.0.0.2", "a", "agent001", SID1)] * 2
    lines = render_hosts("", records, "d").splitlines()
    assert [line.split()[1] for line in lines] == ["a.d", "b.d"]


def test_a_foreign_line_that_mentions_convocate_is_not_ours():
    assert not is_ours("10.0.0.1 host # convocate cluster gateway")
    assert is_ours(f"10.0.0.1 a.d a # convocate abcd1234 {SID1}")


def test_update_writes_only_on_change(tmp_path):
    hosts = HostsFile(tmp_path / "hosts", "d", None)
    record = HostRecord("10.0.0.2", "web", "abcd1234", SID1)
    assert hosts.update([record]) is True
    stamp = (tmp_path / "hosts").stat().st_mtime_ns
    assert hosts.update([record]) is False
    assert (tmp_path / "hosts").stat().st_mtime_ns == stamp
    assert hosts.update([]) is True and (tmp_path / "hosts").read_text() == ""


def test_a_record_whose_field_breaks_its_rule_is_left_out_and_no_line_is_added():
    current = "10.0.0.9 vm-one.c.internal vm-one\n"
    records = [HostRecord("10.0.0.2", "x\n6.6.6.6 evil.example.org", "abcd1234", SID1),
               HostRecord("10.0.0.2", "api.anthropic.com", "abcd1234", SID1),
               HostRecord("10.0.0.2 6.6.6.6", "ok", "abcd1234", SID1),
               HostRecord("10.0.0.2", "ok", "abcd\n234", SID1),
               HostRecord("10.0.0.2", "ok", "abcd1234", "../../etc"),
               HostRecord("10.0.0.2", "Upper", "abcd1234", SID1),
               HostRecord("10.0.0.3", "web", "abcd1234", SID2)]
    assert render_hosts(current, records, "c.internal").splitlines() == [
        "10.0.0.9 vm-one.c.internal vm-one", f"10.0.0.3 web.c.internal web # convocate abcd1234 {SID2}"]


def test_a_name_inside_the_domain_is_written_as_it_is():
    lines = render_hosts("", [HostRecord("10.0.0.2", "api.c.internal", "abcd1234", SID1)], "c.internal").splitlines()
    assert lines == [f"10.0.0.2 api.c.internal # convocate abcd1234 {SID1}"]


def test_a_session_two_agents_hold_has_the_record_of_the_copy_that_runs_or_none():
    from convocate.dns import one_per_session

    sid, other = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91", "0b6c1a0e-5f4e-4c57-9a39-3f0f3a8d2c11"
    source, target = HostRecord("10.0.0.5", "web", "aaaa1111", sid), HostRecord("10.0.0.6", "web", "bbbb2222", sid)
    alone = HostRecord("10.0.0.5", "db", "aaaa1111", other)
    records = [source, alone, target]
    assert one_per_session(records, {("bbbb2222", sid)}) == [alone, target]
    assert one_per_session(records, {("aaaa1111", sid)}) == [source, alone]
    assert one_per_session(records, set()) == [alone]  # neither runs: no name that may point wrongly
    assert one_per_session(records, {("aaaa1111", sid), ("bbbb2222", sid)}) == [alone]
    assert one_per_session([source, alone], set()) == [source, alone]  # one holder: as it always was
