import json
import os
from pathlib import Path

from kbypass.host import doctor
from tests.kb import kbypass


def by_name(results):
    return {c.name: c for c in results}


def test_missing_clang_is_reported_with_its_fix():
    # Simulate the missing piece for real: a PATH without clang.
    proc = kbypass("doctor", "--json", env={"PATH": "/nonexistent"})
    report = json.loads(proc.stdout)
    clang = next(c for c in report["checks"] if c["name"] == "clang")
    assert clang["ok"] is False and clang["required"] is True
    assert "apt-get install clang" in clang["fix"]
    assert report["ok"] is False and proc.returncode == 1


def test_missing_bpffs_is_a_warning_with_its_fix(tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n")
    monkeypatch.setattr(doctor, "PROC_MOUNTS", str(mounts))
    c = doctor.check_bpffs()
    assert not c.ok and not c.required and "mount -t bpf bpf /sys/fs/bpf" in c.fix
    mounts.write_text("bpf /sys/fs/bpf bpf rw 0 0\n")
    assert doctor.check_bpffs().ok


def test_missing_bpf_object_is_required(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "BPF_OBJ_DIR", tmp_path)
    c = doctor.check_bpf_objects()
    assert not c.ok and c.required and "make setup" in c.fix
    assert not doctor.healthy([c])


def test_missing_c_modules_are_a_warning_with_the_fix(monkeypatch):
    import sys

    monkeypatch.delenv("KBYPASS_PURE_PYTHON", raising=False)
    assert doctor.check_native().ok  # make setup built them
    monkeypatch.setenv("KBYPASS_PURE_PYTHON", "1")
    off = doctor.check_native()
    assert not off.ok and "KBYPASS_PURE_PYTHON" in off.fix
    monkeypatch.delenv("KBYPASS_PURE_PYTHON")
    monkeypatch.setitem(sys.modules, "kbypass._fastlane", None)  # import now fails, as when not built
    c = doctor.check_native()
    assert not c.ok and not c.required and "make setup" in c.fix and "kbypass._fastlane" in c.detail
    assert doctor.healthy([c])


def test_not_root_is_reported(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    c = doctor.check_root()
    assert not c.ok and "sudo" in c.fix


def test_json_shape_and_exit_code_agree():
    proc = kbypass("doctor", "--json")
    report = json.loads(proc.stdout)
    assert set(report) >= {"ok", "checks"}
    for c in report["checks"]:
        assert set(c) >= {"name", "ok", "required", "detail", "fix"}
        if not c["ok"]:
            assert c["fix"], f"{c['name']} failed without a fix"
    assert (proc.returncode == 0) == report["ok"]


def test_every_bpf_object_kbypass_loads_is_required(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "BPF_OBJ_DIR", tmp_path)
    (tmp_path / "steer.bpf.o").write_bytes(b"")
    c = doctor.check_bpf_objects()  # the live-frames generator's program is missing
    assert not c.ok and c.required and "livegen.bpf.o" in c.detail
    (tmp_path / "livegen.bpf.o").write_bytes(b"")
    c = doctor.check_bpf_objects()  # the latency floor's pair (bench latency) is missing
    assert not c.ok and "pong.bpf.o" in c.detail and "xdp_pass.bpf.o" in c.detail
    (tmp_path / "pong.bpf.o").write_bytes(b"")
    (tmp_path / "xdp_pass.bpf.o").write_bytes(b"")
    c = doctor.check_bpf_objects()  # the TCP floor's program (bench/tcp_vs_kernel.py) is missing
    assert not c.ok and "tcppong.bpf.o" in c.detail
    (tmp_path / "tcppong.bpf.o").write_bytes(b"")
    assert doctor.check_bpf_objects().ok
    sources = {p.name.replace(".bpf.c", ".bpf.o") for p in (Path(__file__).parents[2] / "bpf").glob("*.bpf.c")}
    assert sources == set(doctor.REQUIRED_OBJECTS)  # every program make setup builds is one kbypass loads


def test_bpf_syscall_number_per_architecture():
    assert doctor.bpf_syscall_number("x86_64") == 321
    assert doctor.bpf_syscall_number("aarch64") == 280
    assert doctor.bpf_syscall_number("riscv64") == 280
    assert doctor.bpf_syscall_number("armv7l") == 386
    assert doctor.bpf_syscall_number("vax") is None  # unknown: the check goes through libbpf instead


def test_bpf_check_on_an_unknown_architecture_goes_through_libbpf(monkeypatch):
    monkeypatch.setattr(doctor.platform, "machine", lambda: "vax")
    c = doctor.check_bpf_syscall()
    if os.geteuid() == 0:
        assert c.ok, c.detail
    else:
        assert "bpf(BPF_MAP_CREATE) failed" in c.detail or not c.ok


def test_native_xdp_not_tried_is_a_warning_alone_and_a_failure_for_the_demo():
    warn = doctor.check_native_xdp("kqnope")  # no such testbed
    assert not warn.ok and not warn.required and "not tried" in warn.detail
    assert "--prefix kqnope" in warn.fix
    fail = doctor.check_native_xdp("kqnope", require_testbed=True)
    assert not fail.ok and fail.required and not doctor.healthy([fail])


def test_run_passes_the_prefix_to_the_native_xdp_check(monkeypatch):
    seen = []
    monkeypatch.setattr(doctor.testbed, "status", lambda prefix=None: seen.append(prefix))
    results = doctor.run([doctor.check_native_xdp], prefix="kqx", require_testbed=True)
    assert seen == ["kqx"] and results[0].required and "'kqx'" in results[0].detail
