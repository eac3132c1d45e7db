import json
import os

from kbypass import doctor
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
