"""The control plane (kbypass.cp) on the testbed: several kbypass programs steering one interface, each
getting exactly its own flow while the kernel keeps the rest; clients and the control plane killed with
SIGKILL; garbage, silent and a thousand short-lived clients; non-root clients.

Which receive queue a packet lands on is the sender's transmit queue on a veth, and XPS maps a CPU to a
transmit queue: the fixture maps CPU q to queue q on host a, and the senders run pinned, so each flow
lands on the queue its receiver holds (AF_XDP takes one socket per queue)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kbypass.cp import paths, protocol
from kbypass.cp.client import ControlPlaneClient, ControlPlaneError
from kbypass.cp.lock import terminate
from kbypass.endpoint import UdpEndpoint
from kbypass.errors import UsageError
from kbypass.host import xps
from kbypass.xsk.umem import FILL
from tests.kb import UNPRIVILEGED, skip_unless_nobody_runs_kbypass, xdp_attached

pytestmark = pytest.mark.skipif(os.cpu_count() < 2, reason="needs two CPUs: one transmit queue per CPU")



@pytest.fixture(scope="session")
def nobody_runs_kbypass() -> None:
    skip_unless_nobody_runs_kbypass()


@pytest.fixture
def hosts(testbed_hosts):
    """The session testbed with XPS on host a (CPU q sends on queue q) and no control plane running in
    either namespace before or after the test."""
    a, b = testbed_hosts
    for h in (a, b):
        terminate(paths.namespace_name(h.netns))
    _xps(a, ["1", "2"])
    yield a, b
    xps.spread_by_cpu(a.iface, a.netns, a.queues)  # the testbed's own: CPU c on queue c mod N
    for h in (a, b):
        terminate(paths.namespace_name(h.netns))
    assert not xdp_attached(b), "a control plane left the steering program attached"


def _xps(host, masks) -> None:
    script = "; ".join(f"echo {m} > /sys/class/net/{host.iface}/queues/tx-{q}/xps_cpus" for q, m in enumerate(masks))
    subprocess.run(["ip", "netns", "exec", host.netns, "sh", "-c", script], check=True)


def send_udp(a, b, port: int, n: int, cpu: int, src_port: int = 0) -> None:
    """n datagrams from host a's kernel to b's address:port, from CPU `cpu` (so on a's queue `cpu`)."""
    code = (f"import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{a.ipv4}',{src_port}))\n"
            f"for i in range({n}):\n    s.sendto(i.to_bytes(4,'big')+bytes(60),('{b.ipv4}',{port}))\n"
            f"    time.sleep(0.0005)\n")
    subprocess.run(["ip", "netns", "exec", a.netns, "taskset", "-c", str(cpu), sys.executable, "-c", code],
                   check=True, timeout=60)


def sink(b, rule: str, queue: int, seconds: float, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kbypass", "sink", "--host", "b", "--rule", rule, "--queue",
                             str(queue), "-t", str(seconds), "--json", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def pool_members(host, queue: int = 0) -> int:
    """Members of the shared pool of `queue` on the host's interface (0: no pool)."""
    return sum(len(p["members"]) for i in status(host)["interfaces"] for p in i["pools"] if p["queue"] == queue)


def status(host) -> dict:
    with ControlPlaneClient(host.netns, start=False, command="test status") as cp:
        st = cp.status()
        st["clients"] = [c for c in st["clients"] if c["client"] != cp.client_id]
        return st


def wait_for(what, cond, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = cond()
        except ControlPlaneError:
            got = None
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def sockets_of(host) -> set[str]:
    return {s for c in status(host)["clients"] for s in c["sockets"]}


def _kill(*procs: subprocess.Popen) -> None:
    """Whatever of `procs` still runs, killed and reaped (a test that failed midway leaves no process)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


def rule_counts(host) -> dict[str, int]:
    """Packets each rule on the host's interface matched (the steering program's counters), by rule text."""
    return {r["rule"]: r["packets"] for i in status(host)["interfaces"] for r in i["rules"]}


def stop_at(proc: subprocess.Popen, host, rule: str, packets: int) -> None:
    """Ctrl-C to a receiving tool (sink, capture: as its user stops it) once its rule has matched `packets`
    (all sent: the kernel put them in its ring) and a moment more for it to take them, instead of a fixed
    -t that outlasts the test's traffic on the slowest machine. What it counts is still the caller's to
    check exactly: a packet too many or too few shows."""
    wait_for(f"{rule!r} to match {packets} packets", lambda: rule_counts(host).get(f"{rule} redirect", 0) >= packets)
    # The tool does not drain its ring after Ctrl-C (a user stopping it wants it stopped): give it a second,
    # which a tool that reads at all uses in milliseconds even on a loaded CI machine.
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)


def finish_at(proc: subprocess.Popen, host, rule: str, packets: int) -> dict:
    """The sink's summary, stopped by stop_at."""
    stop_at(proc, host, rule, packets)
    return finish(proc)


def test_two_sinks_on_one_queue_and_a_third_on_another_each_get_exactly_their_flow_while_the_kernel_keeps_the_rest(
        hosts):
    a, b = hosts
    one, two = sink(b, "udp dport 5000", 0, 60, "--share-queue"), sink(b, "udp dport 5003", 0, 60, "--share-queue")
    three = sink(b, "udp dport 5001", 1, 60)
    try:
        wait_for("the three sinks' sockets", lambda: sum(len(c["sockets"]) for c in status(b)["clients"]) == 3)
        st = status(b)
        assert [len(st["interfaces"]), sorted(r["rule"] for r in st["interfaces"][0]["rules"])] == [
            1, ["udp dport 5000 redirect", "udp dport 5001 redirect", "udp dport 5003 redirect"]]
        # one UMEM for queue 0, two members; queue 1 is the third sink's alone
        (pool,) = st["interfaces"][0]["pools"]
        assert (pool["queue"], len(pool["members"])) == (0, 2)
        assert sorted((s["queue"], s["shared"]) for s in st["interfaces"][0]["sockets"]) == [
            (0, True), (0, True), (1, False)]
        # the kernel keeps what nobody asked for: a UDP socket on b and ping, while the sinks steer
        with _kernel_socket(b, 5002) as ks:
            send_udp(a, b, 5000, 300, cpu=0)
            send_udp(a, b, 5003, 250, cpu=0)
            send_udp(a, b, 5001, 200, cpu=1)
            send_udp(a, b, 5002, 20, cpu=0)
            got = sum(1 for _ in iter(lambda: _recv_or_none(ks), None))
        assert got == 20
        ping = subprocess.run(["ip", "netns", "exec", a.netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", b.ipv4],
                              capture_output=True)
        assert ping.returncode == 0
        first, second, third = (finish_at(one, b, "udp dport 5000", 300), finish_at(two, b, "udp dport 5003", 250),
                                finish_at(three, b, "udp dport 5001", 200))
        assert (first["packets"], second["packets"], third["packets"]) == (300, 250, 200)
        wait_for("the program and the pool to go with the last rule", lambda: not xdp_attached(b))
    finally:
        _kill(one, two, three)


def test_a_shared_queue_member_killed_leaves_the_other_every_packet_and_its_pool_goes_with_the_last(hosts):
    a, b = hosts
    victim = sink(b, "udp dport 5000", 0, 30, "--share-queue")
    keeper = sink(b, "udp dport 5003", 0, 60, "--share-queue")
    try:
        wait_for("both members", lambda: pool_members(b) == 2)
        send_udp(a, b, 5000, 100, cpu=0)  # the victim holds frames of the pool when it dies
        send_udp(a, b, 5003, 150, cpu=0)
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        wait_for("the victim to leave the pool", lambda: pool_members(b) == 1, timeout=1.0)
        send_udp(a, b, 5003, 150, cpu=0)
        assert finish_at(keeper, b, "udp dport 5003", 300)["packets"] == 300
        wait_for("the pool and the program to go with the last member", lambda: not xdp_attached(b))
    finally:
        _kill(victim, keeper)


def test_a_queue_is_shared_only_by_programs_that_all_ask_with_one_layout_and_a_pool_takes_eight(hosts):
    _, b = hosts
    layout = dict(frames=256, frame_size=2048, rx_size=64, tx_size=64, fill_size=64, comp_size=64)
    held = []

    def client(name):
        c = ControlPlaneClient(b.netns, command=name)
        held.append(c)
        return c

    try:
        alone = client("alone")
        xsk, umem, _ = alone.open_socket(b.iface, 1, **layout)
        for fd in (xsk, umem):
            os.close(fd)
        with pytest.raises(ControlPlaneError, match="does not share it: start both with --share-queue"):
            client("joiner").open_socket(b.iface, 1, share_queue=True, **layout)
        members = []
        for i in range(8):
            xsk, umem, made = client(f"member {i}").open_socket(b.iface, 0, share_queue=True, **layout)
            members.append(made)
            for fd in (xsk, umem, made["shared_queue"].lock_fd):
                os.close(fd)
        assert [m["shared_queue"].first for m in members] == [256 * i for i in range(8)]
        assert {(m["frames"], m["fill_size"]) for m in members} == {(256 * 8, 64 * 8)}
        with pytest.raises(ControlPlaneError, match="ask to share it too"):
            client("exclusive").open_socket(b.iface, 0, **layout)
        with pytest.raises(ControlPlaneError, match="is shared with slices of 256 frames"):
            client("other layout").open_socket(b.iface, 0, share_queue=True, **{**layout, "frames": 512})
        with pytest.raises(ControlPlaneError, match="is shared in copy mode, not zerocopy"):
            client("other mode").open_socket(b.iface, 0, share_queue=True, mode="zerocopy", **layout)
        held[2].close()  # a member leaves: its slice is not given out again
        with pytest.raises(ControlPlaneError, match="given out all 8 of its slices"):
            client("ninth").open_socket(b.iface, 0, share_queue=True, **layout)
        for c in held[3:]:
            c.close()
        wait_for("the pool to go with its last member", lambda: pool_members(b) == 0)
        xsk, umem, made = client("after").open_socket(b.iface, 0, share_queue=True, **layout)
        for fd in (xsk, umem, made["shared_queue"].lock_fd):
            os.close(fd)
        assert made["shared_queue"].first == 0  # a new pool
    finally:
        for c in held:
            c.close()
    wait_for("everything to go", lambda: not xdp_attached(b))


def test_shared_queue_members_take_each_others_frames_and_completions_and_both_still_add_up(hosts):
    """Frames float: a member that receives more than it lent, and one that reaps another's completions,
    count below zero (net) and go on; nothing is lost or handed out twice."""
    a, b = hosts
    from kbypass.port.steered import SteeredPort

    small = dict(frames=256, rx_size=256, tx_size=256, fill_size=256, comp_size=256, share_queue=True)
    with SteeredPort(b.iface, 0, ["udp dport 5000"], netns=b.netns, **small) as one, \
            SteeredPort(b.iface, 0, ["udp dport 5003"], netns=b.netns, **small) as two:
        p1, p2 = one.ports[0], two.ports[0]
        assert (p1.in_fill, p2.in_fill) == (128, 128)  # each lent half its slice
        # held, more than `one`'s whole slice: the rest are `two`'s frames (received while sent: the RX ring
        # holds 256)
        sender = threading.Thread(target=send_udp, args=(a, b, 5000, 300), kwargs={"cpu": 0})
        sender.start()
        got, lowest = [], 128
        deadline = time.monotonic() + 5
        while sum(len(x) for x in got) < 300 and time.monotonic() < deadline:
            batch = p1.receive(64)
            lowest = min(lowest, p1.in_fill)
            if len(batch):
                got.append(batch)
        sender.join()
        assert sum(len(x) for x in got) == 300 and lowest < 0
        # sent back as they are (host a drops them: not its MAC); `one` does not reap meanwhile (as if `two`
        # came first), so `two` finds `one`'s completions and takes those frames
        p1.reap = lambda: 0
        sent = 0
        while got and sent + len(got[0]) <= 200:  # fewer than the completion ring holds
            batch = got.pop(0)
            sent += len(batch)
            while len(batch):
                batch = batch[p1.transmit(batch):]
        free_before = p2.umem.free_count
        taken = 0
        deadline = time.monotonic() + 5
        while taken < sent and time.monotonic() < deadline:
            taken += p2.reap()
        assert sent > 100 and taken == sent and p2.in_tx == -sent and p2.umem.free_count == free_before + sent
        del p1.reap
        for batch in got:
            p1.free(batch)
        for port in (p1, p2):
            counts = port.check(app=0)
            assert counts["app"] == 0 and counts["free"] == port.umem.free_count
        # every frame of the pool is in exactly one member's hands or the kernel's: none twice
        mine = [set(np.flatnonzero(p.umem.state != FILL)) for p in (p1, p2)]
        assert not mine[0] & mine[1]
    wait_for("the pool to go", lambda: not xdp_attached(b))


def test_a_shared_queue_member_refuses_a_message_lane_saying_why(hosts):
    _, b = hosts
    from kbypass.port.steered import SteeredPort

    with SteeredPort(b.iface, 0, ["udp dport 5000"], netns=b.netns, share_queue=True, frames=512) as sp:
        assert sp.ports[0].shared and sp.sockets == "cp"
        with pytest.raises(UsageError, match="needs a queue of its own"):
            sp.ports[0].message_lane()
    with pytest.raises(UsageError, match="sockets are the control plane's"):
        SteeredPort(b.iface, 0, ["udp dport 5000"], netns=b.netns, share_queue=True, sockets="own")


def test_kill_9_of_one_sink_removes_its_rule_and_socket_within_a_second_and_the_other_keeps_every_packet(hosts):
    a, b = hosts
    victim, keeper = sink(b, "udp dport 5000", 0, 30), sink(b, "udp dport 5001", 1, 60)
    try:
        wait_for("both sockets", lambda: sockets_of(b) == {f"{b.iface}:0", f"{b.iface}:1"})
        send_udp(a, b, 5001, 150, cpu=1)
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        t0 = time.monotonic()
        wait_for("the victim's rule and socket to go", lambda: sockets_of(b) == {f"{b.iface}:1"}, timeout=1.0)
        assert time.monotonic() - t0 < 1.0
        rules = [r["rule"] for r in status(b)["interfaces"][0]["rules"]]
        assert rules == ["udp dport 5001 redirect"]
        send_udp(a, b, 5001, 150, cpu=1)
        assert finish_at(keeper, b, "udp dport 5001", 300)["packets"] == 300
    finally:
        _kill(victim, keeper)


def test_kill_9_of_the_control_plane_leaves_nothing_attached_and_the_next_tool_starts_a_new_one(hosts):
    a, b = hosts
    first = sink(b, "udp dport 5000", 0, 30)
    try:
        wait_for("the sink's socket", lambda: sockets_of(b) == {f"{b.iface}:0"})
        pid = status(b)["server_pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for("the program to go with the control plane", lambda: not xdp_attached(b), timeout=2.0)
        # the client says so when it next asks (the sink asks for its counters at the end)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=10)
        assert "control plane of namespace" in err and "went away" in err and "Traceback" not in err
    finally:
        _kill(first)
    second = sink(b, "udp dport 5000", 0, 60)
    try:
        wait_for("a new control plane with the new sink", lambda: sockets_of(b) == {f"{b.iface}:0"})
        assert status(b)["server_pid"] != pid
        send_udp(a, b, 5000, 100, cpu=0)
        assert finish_at(second, b, "udp dport 5000", 100)["packets"] == 100
    finally:
        _kill(second)


def test_overlapping_rules_of_two_clients_are_refused_naming_the_other_unless_both_share(hosts):
    _, b = hosts
    with ControlPlaneClient(b.netns, command="first") as one, ControlPlaneClient(b.netns, command="second") as two:
        one.add_rule(b.iface, "udp dport 5000")
        with pytest.raises(ControlPlaneError, match=rf"overlaps 'udp dport 5000 redirect' of client {one.client_id} "
                                                    rf"\(pid {os.getpid()}, "):
            two.add_rule(b.iface, "udp dst 10.77.0.0/16")
        two.add_rule(b.iface, "udp dport 5001")  # disjoint: fine
        with pytest.raises(ControlPlaneError, match="you have no rule"):
            two.remove_rule(b.iface, 0)  # one's rule: not two's to remove
        shared = one.add_rule(b.iface, "tcp dport 80", share=True)
        two.add_rule(b.iface, "tcp", share=True)
        one.remove_rule(b.iface, shared)
    wait_for("everything to go with the clients", lambda: not xdp_attached(b))


def test_stop_is_refused_while_other_clients_are_connected_unless_forced(hosts):
    _, b = hosts
    with ControlPlaneClient(b.netns, command="holder") as holder:
        holder.add_rule(b.iface, "udp dport 5000")
        from tests.kb import kbypass

        refused = kbypass("cp", "stop", "--host", "b")
        assert refused.returncode == 2 and "1 other client(s) connected" in refused.stderr
        forced = kbypass("cp", "stop", "--host", "b", "--force")
        assert forced.returncode == 0, forced.stderr
        assert not xdp_attached(b)
        with pytest.raises(ControlPlaneError, match="went away"):
            holder.counters(b.iface)


def test_the_control_plane_survives_garbage_silence_and_a_thousand_clients_that_die(hosts):
    _, b = hosts
    with ControlPlaneClient(b.netns, command="witness") as witness:
        witness.add_rule(b.iface, "udp dport 5000")
        path = paths.socket_path(paths.namespace_name(b.netns))

        def raw() -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(path)
            s.settimeout(5)
            return s

        with raw() as s:  # garbage, then an oversized message, then a request before hello
            for junk in (b"\x00\xff garbage", b"{" * 70000, b'{"op":"add","iface":"x","rule":"udp"}'):
                s.send(junk)
                reply = json.loads(s.recv(protocol.MAX_MESSAGE))
                assert reply["ok"] is False and reply["error"]
            # a request carrying a file descriptor it should not
            r, w = os.pipe()
            s.sendmsg([protocol.request("status")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))])
            assert "file descriptor" in json.loads(s.recv(protocol.MAX_MESSAGE))["error"]
            os.close(r)
            os.close(w)
        silent = raw()  # a client that asks and never reads its replies: dropped, not waited for
        silent.send(protocol.request("hello", version=protocol.VERSION))
        silent.setblocking(False)
        try:
            for _ in range(100000):
                silent.send(protocol.request("status"))
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass
        silent.close()
        for i in range(1000):  # connect, half of them add a rule, die without a word
            c = raw()
            if i % 2:
                c.send(protocol.request("hello", version=protocol.VERSION))
                c.recv(4096)
                c.send(protocol.request("add", iface=b.iface, rule=f"udp dport {10000 + i}"))
                assert json.loads(c.recv(4096))["ok"]
            c.close()

        def only_the_witness_left():
            now = status(b)
            return now if len(now["interfaces"][0]["rules"]) == 1 else None

        st = wait_for("the dead clients' rules to go", only_the_witness_left)
        assert [c["client"] for c in st["clients"]] == [witness.client_id]
        assert witness.counters(b.iface)[0]["rule"] == "udp dport 5000 redirect"


def test_any_request_gets_an_answer_and_leaves_no_rule_behind(hosts):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, b = hosts
    with ControlPlaneClient(b.netns, command="fuzz keeper"):  # keeps the control plane up between examples
        path = paths.socket_path(paths.namespace_name(b.netns))
        field = st.one_of(st.integers(-5, 70000), st.text(max_size=12), st.booleans(), st.sampled_from(
            [b.iface, "udp dport 5000", "tcp dport 80 drop", "udp dport 5000 sample prob 0.5", "lo", "native", 64,
             2048]))
        requests = st.lists(st.fixed_dictionaries({"op": st.sampled_from(sorted(protocol.OPS) + ["nope"])}, optional={
            k: field for k in ("iface", "rule", "queue", "rule_id", "priority", "share", "xdp_mode", "force",
                               "version", "command", "share_queue", "frames", "frame_size", "rx_size", "tx_size",
                               "fill_size", "comp_size")}), min_size=1, max_size=6)

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(requests)
        def one_client(reqs):
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.connect(path)
                s.settimeout(5)
                s.send(protocol.request("hello", version=protocol.VERSION))
                assert json.loads(s.recv(4096))["ok"]
                for req in reqs:
                    if req["op"] in ("stop", "bye"):
                        continue  # stopping is tested above; bye ends the connection
                    s.send(json.dumps(req).encode())
                    reply = json.loads(s.recv(protocol.MAX_MESSAGE))
                    assert reply["ok"] or reply["error"]
            wait_for("the client's rules to go", lambda: not status(b)["interfaces"])

        one_client()
    assert not xdp_attached(b)


def test_two_udp_endpoints_on_two_ports_of_one_interface_in_one_process_each_talk_to_a_kernel_peer(hosts):
    a, b = hosts
    with UdpEndpoint(b.iface, b.ipv4, 5100, netns=b.netns, queue=0) as e0, \
            UdpEndpoint(b.iface, b.ipv4, 5101, netns=b.netns, queue=1) as e1:
        for ep, port, cpu in ((e0, 5100, 0), (e1, 5101, 1)):
            peer = subprocess.Popen(
                ["ip", "netns", "exec", a.netns, "taskset", "-c", str(cpu), sys.executable, "-c",
                 f"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(5)\n"
                 f"s.sendto(b'ping {port}',('{b.ipv4}',{port}))\nprint(s.recvfrom(100)[0].decode())"],
                stdout=subprocess.PIPE, text=True)
            data, addr = ep.recvfrom(timeout=5)
            assert data == f"ping {port}".encode()
            ep.sendto(b"pong " + data, addr)
            assert peer.communicate(timeout=10)[0].strip() == f"pong ping {port}"
        assert sockets_of(b) == {f"{b.iface}:0", f"{b.iface}:1"}


def test_a_non_root_client_steers_its_own_port_and_nothing_else(nobody_runs_kbypass, hosts, testbed_hosts):
    a, b = hosts
    from tests.kb import kbypass

    started = kbypass("cp", "start", "--host", "b", "--users", "all")
    assert started.returncode == 0, started.stderr
    code = f"""
import socket
from kbypass.cp.client import ControlPlaneClient, ControlPlaneError
cp = ControlPlaneClient()
print("ok", cp.add_rule("{b.iface}", "udp dport 7000"))
for rule in ("udp dport 5000", "udp dport 22", "udp dport 7100", "udp dport 7200 drop", "udp"):
    try:
        cp.add_rule("{b.iface}", rule)
        print("allowed", rule)
    except ControlPlaneError as e:
        print("refused", rule, "|", e)
for what, call in (("lo", lambda: cp.add_rule("lo", "udp dport 7300")), ("stop", lambda: cp.stop(force=True))):
    try:
        call()
        print("allowed", what)
    except ControlPlaneError as e:
        print("refused", what, "|", e)
"""
    with ControlPlaneClient(b.netns, command="root owner") as owner, _kernel_socket(b, 7100):
        owner.add_rule(b.iface, "udp dport 5000")
        run = subprocess.run(["ip", "netns", "exec", b.netns, "setpriv", "--reuid=65534", "--regid=65534",
                              "--clear-groups", "--inh-caps=-all", sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("ok ")
    verdicts = {line.split(" | ")[0].split(" ", 1)[1]: line for line in lines[1:]}
    assert verdicts["udp dport 5000"].startswith("refused") and "overlaps" in verdicts["udp dport 5000"]
    assert "from 1024 up" in verdicts["udp dport 22"]
    assert "belongs to a kernel socket" in verdicts["udp dport 7100"]
    assert "only root clients add drop rules" in verdicts["udp dport 7200 drop"]
    assert verdicts["udp"].startswith("refused")
    assert "may steer only the interfaces" in verdicts["lo"] and f"--iface: {b.iface}" in verdicts["lo"]
    assert "only root stops the control plane" in verdicts["stop"]
    assert os.stat(paths.lock_path(paths.namespace_name(b.netns))).st_mode & 0o777 == 0o600


def test_a_lingering_socket_sent_as_an_fd_does_not_stall_the_control_plane(hosts):
    """Closing a TCP socket with SO_LINGER and unsent data blocks for the linger time: the control plane
    closes the fds clients send, so it must not let them linger (one client would freeze everyone)."""
    _, b = hosts
    with ControlPlaneClient(b.netns, command="witness") as witness:
        listener = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()  # never reads: the window closes
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.setblocking(False)
        try:
            while True:
                c.send(bytes(65536))
        except BlockingIOError:
            pass
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 30))
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(paths.socket_path(paths.namespace_name(b.netns)))
            s.sendmsg([protocol.request("status")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                      struct.pack("ii", c.fileno(), c.fileno()))])
            c.close()  # the control plane now holds the last reference
            s.settimeout(5)
            assert "file descriptor" in json.loads(s.recv(protocol.MAX_MESSAGE))["error"]
        t0 = time.monotonic()
        assert witness.status()["server_pid"]
        assert time.monotonic() - t0 < 1.0
        peer.close()
        listener.close()


class _kernel_socket:
    """A kernel UDP socket bound in host's namespace (the kernel's own port, beside the steering)."""

    def __init__(self, host, port: int) -> None:
        from kbypass import netns

        with netns.entered(host.netns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host.ipv4, port))
        self.sock.settimeout(1.0)

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(self, *exc) -> None:
        self.sock.close()


def _recv_or_none(sock: socket.socket):
    try:
        return sock.recv(2048)
    except TimeoutError:
        return None


def test_a_clients_redirect_reaches_only_its_own_sockets(hosts):
    """Without socket groups a rule redirects to whatever socket sits on the packet's queue: a client with a
    rule and no socket would take the packets into another client's rings."""
    a, b = hosts
    other = sink(b, "udp dport 5001", 0, 60)
    try:
        wait_for("the sink's socket", lambda: sockets_of(b) == {f"{b.iface}:0"})
        with ControlPlaneClient(b.netns, command="rule, no socket") as lonely, _kernel_socket(b, 5000) as ks:
            rid = lonely.add_rule(b.iface, "udp dport 5000")
            send_udp(a, b, 5000, 40, cpu=0)
            got = sum(1 for _ in iter(lambda: _recv_or_none(ks), None))
            assert got == 40  # matched (counted) but passed to the kernel: this client has no socket here
            assert {r["rule_id"]: r["packets"] for r in lonely.counters(b.iface)}[rid] == 40
        send_udp(a, b, 5001, 30, cpu=0)
        assert finish_at(other, b, "udp dport 5001", 30)["packets"] == 30  # the other flow only
    finally:
        _kill(other)


def test_priority_orders_the_rules_of_different_clients(hosts):
    a, b = hosts
    with ControlPlaneClient(b.netns, command="dropper") as dropper, \
            ControlPlaneClient(b.netns, command="passer") as passer, _kernel_socket(b, 5000) as ks:
        drop = dropper.add_rule(b.iface, "udp dport 5000 drop", priority=200, share=True)
        keep = passer.add_rule(b.iface, "udp dport 5000 pass", priority=10, share=True)
        assert [r["rule_id"] for r in dropper.counters(b.iface)] == [keep, drop]
        send_udp(a, b, 5000, 20, cpu=0)
        assert sum(1 for _ in iter(lambda: _recv_or_none(ks), None)) == 20  # the lower priority number decides
        dropper.remove_rule(b.iface, drop)
        drop = dropper.add_rule(b.iface, "udp dport 5000 drop", priority=5, share=True)
        assert [r["rule_id"] for r in passer.counters(b.iface)] == [drop, keep]
        send_udp(a, b, 5000, 20, cpu=0)
        assert _recv_or_none(ks) is None
        counts = {r["rule_id"]: r["packets"] for r in passer.counters(b.iface)}
        assert counts == {drop: 20, keep: 20}


def test_a_root_steered_port_on_cp_made_sockets_receives_its_flow_and_its_umem_adds_up(hosts):
    a, b = hosts
    from kbypass.port.steered import SteeredPort

    with SteeredPort(b.iface, 0, ["udp dport 5000"], netns=b.netns, sockets="cp", frames=1024, rx_size=512,
                     fill_size=512, comp_size=512, tx_size=512) as sp:
        assert sp.sockets == "cp" and sp.mode == "copy"
        assert status(b)["interfaces"][0]["sockets"] == [{"queue": 0, "group": sp.steering.group,
                                                          "owner": sp.steering.client.client_id, "shared": False}]
        send_udp(a, b, 5000, 200, cpu=0)
        got = _drain(sp, 200)
        assert (got, sp.unreached()) == (200, 0)
        assert sp.check(app=0) == {"free": 512, "fill": 512, "app": 0, "tx": 0}
        assert sp.rule_counters()[0]["packets"] == 200
    wait_for("the socket and the program to go with the port", lambda: not xdp_attached(b))


def _drain(sp, n: int, timeout: float = 5.0, linger: float = 0.3) -> int:
    """Receive (and free) until n packets came, then `linger` seconds more for any that should not."""
    got, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = sp.receive(64)
        got += len(batch)
        sp.free(batch)
        if got >= n:
            deadline = min(deadline, time.monotonic() + linger)
        sp.wait(0.05)
    return got


def _unprivileged_port(b, port: int, queue: int, expect: int) -> subprocess.Popen:
    """A process of user nobody, no capabilities, in b's namespace: a SteeredPort on cp-made sockets for
    `udp dport PORT` on `queue` that tries to take udp dport 5000 too, says "ready", receives `expect`
    packets and reports."""
    code = f"""
import os
from kbypass.cp.client import ControlPlaneError
from kbypass.port.steered import SteeredPort
from tests.netns.test_cp import _drain
with SteeredPort("{b.iface}", {queue}, ["udp dport {port}"]) as sp:
    try:
        sp.steering.add("udp dport 5000")
        print("allowed", flush=True)
    except ControlPlaneError as e:
        print("refused |", e, flush=True)
    print("ready", os.geteuid(), sp.sockets, sp.mode, flush=True)
    got = _drain(sp, {expect}, timeout=30)
    print("got", got, sp.unreached(), sp.check(app=0)["app"], flush=True)
"""
    return subprocess.Popen(["ip", "netns", "exec", b.netns, *UNPRIVILEGED, sys.executable, "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)


def _until_ready(proc: subprocess.Popen) -> list[str]:
    lines = []
    while not lines or not lines[-1].startswith("ready"):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the unprivileged client ended: {lines} {proc.stderr.read()}")
        lines.append(line.strip())
    return lines


def test_an_unprivileged_client_receives_its_flow_through_cp_made_sockets_and_cannot_take_anothers_port(
        nobody_runs_kbypass, hosts):
    a, b = hosts
    from tests.kb import kbypass

    started = kbypass("cp", "start", "--host", "b", "--users", "all")
    assert started.returncode == 0, started.stderr
    with ControlPlaneClient(b.netns, command="root owner") as owner:
        owner.add_rule(b.iface, "udp dport 5000")
        client = _unprivileged_port(b, 7000, 0, 300)
        try:
            lines = _until_ready(client)
            assert lines[-1] == "ready 65534 cp copy"
            assert lines[0].startswith("refused |") and f"of client {owner.client_id} (pid {os.getpid()}" in lines[0]
            send_udp(a, b, 7000, 300, cpu=0)
            send_udp(a, b, 5000, 50, cpu=0)  # the owner's port: not the unprivileged client's to see
            out, err = client.communicate(timeout=60)
        finally:
            _kill(client)
    assert client.returncode == 0, err
    assert out.split() == ["got", "300", "0", "0"]


def test_kill_9_of_an_unprivileged_client_frees_its_cp_made_socket_and_queue_within_a_second(
        nobody_runs_kbypass, hosts):
    _, b = hosts
    from kbypass.port.afxdp import socket_layout
    from tests.kb import kbypass

    started = kbypass("cp", "start", "--host", "b", "--users", "all")
    assert started.returncode == 0, started.stderr
    victim = _unprivileged_port(b, 7000, 0, 1)
    try:
        _until_ready(victim)
        assert sockets_of(b) == {f"{b.iface}:0"}
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        t0 = time.monotonic()
        wait_for("the victim's socket to leave the XSKMAP", lambda: not sockets_of(b), timeout=1.0)
        with ControlPlaneClient(b.netns, command="next") as nxt:
            def take_queue_0():
                try:
                    fds = nxt.open_socket(b.iface, 0, **socket_layout({"frames": 256}))
                except ControlPlaneError as e:
                    assert "busy" in str(e).lower() or "has client" in str(e), e
                    return None
                return fds

            xsk_fd, umem_fd, layout = wait_for("queue 0 to be free again", take_queue_0, timeout=1.0)
            assert time.monotonic() - t0 < 1.0
            os.close(xsk_fd)
            os.close(umem_fd)
            assert layout["frames"] == 256 and sockets_of(b) == {f"{b.iface}:0"}
    finally:
        _kill(victim)


def test_kbypass_sink_without_root_works_through_a_control_plane_that_admits_the_user_and_says_how_otherwise(
        nobody_runs_kbypass, hosts):
    a, b = hosts
    from tests.kb import kbypass

    def nobody_sink(seconds: float) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", b.netns, *UNPRIVILEGED, sys.executable, "-m", "kbypass", "sink",
                                 "--iface", b.iface, "--rule", "udp dport 7000", "-t", str(seconds), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    assert kbypass("cp", "start", "--host", "b").returncode == 0  # root only
    err = nobody_sink(1).communicate(timeout=30)[1]
    assert "admits root only" in err and "--users all" in err and "Traceback" not in err
    assert kbypass("cp", "stop", "--host", "b").returncode == 0
    assert kbypass("cp", "start", "--host", "b", "--users", "all").returncode == 0
    proc = nobody_sink(60)
    try:
        wait_for("the sink's sockets", lambda: sockets_of(b) == {f"{b.iface}:0", f"{b.iface}:1"})
        send_udp(a, b, 7000, 120, cpu=1)
        assert finish_at(proc, b, "udp dport 7000", 120)["packets"] == 120
    finally:
        _kill(proc)


def test_a_mistyped_interface_is_refused_from_the_callers_side_and_starts_no_control_plane(hosts):
    _, b = hosts
    from kbypass.errors import UsageError
    from kbypass.port.steered import SteeredPort

    with pytest.raises(UsageError, match=rf"no interface 'nosuch0' in namespace '{b.netns}': .*ip -n {b.netns} link"):
        SteeredPort("nosuch0", 0, ["udp dport 5000"], netns=b.netns)
    from kbypass.cp.client import running

    assert not running(b.netns)  # nothing was started for the typo


def test_a_handed_connections_pass_rule_is_granted_once_where_the_clients_own_rule_steers_it(hosts):
    """`handed` (kbypass run hands a connection to the kernel's TCP before a posix_spawn): the connected socket
    proves the 4-tuple; a pass rule ahead of the client's own port rule is granted once per 4-tuple, never for a
    connection no rule of the client's steers (it reaches the kernel already: a rule would only take a slot), and
    it goes once the kernel is done with the connection (TIME_WAIT counts as done)."""
    from kbypass import netns

    _, b = hosts
    with netns.entered(b.netns):
        lst = socket.create_server((b.ipv4, 0))
        cli = socket.create_connection(lst.getsockname())
    srv, peer = lst.accept()
    port = lst.getsockname()[1]

    def pass_rules(cp):
        return [r["rule"] for r in cp.counters(b.iface) if r["rule"].endswith(" pass")]

    with ControlPlaneClient(b.netns, command="handed") as cp:
        with pytest.raises(ControlPlaneError, match="no rule of yours steers"):
            cp._call("handed", fds=(srv.fileno(),))
        cp.add_rule(b.iface, f"tcp dst {b.ipv4} dport {port}")
        cp._call("handed", fds=(srv.fileno(),))
        with pytest.raises(ControlPlaneError, match="has its pass rule already"):
            cp._call("handed", fds=(srv.fileno(),))
        assert pass_rules(cp) == [f"tcp src {b.ipv4} dst {b.ipv4} sport {peer[1]} dport {port} pass"]
        srv.close()  # this end first: it goes to TIME_WAIT, done as far as the rule is concerned
        cli.close()
        wait_for("the pass rule to go", lambda: not pass_rules(cp), timeout=5)
    lst.close()


def test_a_socket_of_another_namespace_proves_nothing_here(hosts):
    """A proof must be a socket of the control plane's own namespace (review pe): any user may make a namespace
    of their own and bind any port there, which holds nothing here, and sock_diag lists only this namespace."""
    from kbypass import netns

    a, b = hosts
    with netns.entered(a.netns):
        there = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.entered(b.netns):
        here = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    there.bind(("0.0.0.0", 0))
    here.bind((b.ipv4, 0))
    try:
        with ControlPlaneClient(b.netns, command="other namespace") as cp:
            with pytest.raises(ControlPlaneError, match="another network namespace"):
                cp._call("accelerate", fds=(there.fileno(),))
            assert cp._call("accelerate", fds=(here.fileno(),))["port"] == here.getsockname()[1]
    finally:
        there.close()
        here.close()
