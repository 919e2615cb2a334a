"""The phone's own state, read by the agent (agents/device_probe.py) from the files an emulated
device writes in the kernel's formats, and the lmkd lines of its logcat."""

from __future__ import annotations

import os

from agents.device_probe import DeviceProbe
from fleet.devices.emulator.sandbox import Facts, Sandbox
from fleet.results.report import thermal_rows


def test_readings_come_in_base_units_from_the_kernel_files(tmp_path):
    box = Sandbox(tmp_path / "dev", Facts(battery_level=71))
    box.write_sensors(battery_c=31.4, cpu_c=48.25, level=71, load=0.5)
    got = {(r.kind, r.name): r.value for r in DeviceProbe(str(box.root)).read()}
    assert got[("battery", "level_pct")] == 71
    assert abs(got[("battery", "temp_c")] - 31.4) < 1e-9
    assert abs(got[("battery", "current_a")] - (-0.85)) < 1e-9  # uA -> A, discharging
    assert 3.5 < got[("battery", "voltage_v")] < 4.5
    assert abs(got[("thermal", "cpu-0-0-usr")] - 48.25) < 1e-9  # m°C -> C
    assert got[("cpufreq", "policy0")] > 1e6  # kHz -> Hz
    assert got[("memory", "available_bytes")] > 0  # /proc: the kernel's own


def test_a_machine_without_a_battery_gives_what_it_has(tmp_path):
    kinds = {r.kind for r in DeviceProbe(str(tmp_path)).read()}
    assert "battery" not in kinds and "memory" in kinds


def test_the_systems_own_lmk_kills_since_the_trial_began_become_events(tmp_path, monkeypatch):
    box = Sandbox(tmp_path / "dev", Facts())
    monkeypatch.setenv("PATH", f"{box.root / 'system/bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("SLM_FLEET_DEVICE_ROOT", str(box.root))
    box.lmk_kill(1234, "com.example.old", 40960)  # before the trial: not this trial's
    probe = DeviceProbe()
    assert probe.lmk_kills() == []
    box.lmk_kill(2345, "com.example.chat", 81920)
    (event,) = probe.lmk_kills()
    assert event.kind == "system_lmk_kill" and event.bytes == 81920 * 1024
    assert "com.example.chat" in event.detail and "2345" in event.detail
    assert probe.lmk_kills() == []


def test_the_report_gives_each_phones_temperatures_with_their_spread():
    rows = thermal_rows([("a", 30.0, 33.5, 0.0), ("a", 31.0, 36.0, 12.0), ("b", None, 29.0, 0.0)])
    a = next(r for r in rows if r["phone"] == "a")
    assert a["battery C at start"] == "30.5 [30.0, 31.0]"
    assert a["largest rise C"] == "5.0" and a["cooldown s"] == "12" and a["trials"] == "2"
    assert next(r for r in rows if r["phone"] == "b")["battery C at start"] == "-"


def test_dumpsys_meminfo_gives_a_process_pss_where_proc_is_hidden(tmp_path, monkeypatch):
    from agents.probes import dumpsys_pss

    box = Sandbox(tmp_path / "dev", Facts())
    monkeypatch.setenv("PATH", f"{box.root / 'system/bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("SLM_FLEET_DEVICE_ROOT", str(box.root))
    rss, pss = dumpsys_pss(os.getpid())
    assert 0 < pss <= rss
    import psutil

    mem = psutil.Process().memory_full_info()
    assert abs(pss - mem.pss) < 0.2 * mem.pss  # the same figure, read another way
