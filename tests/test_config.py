"""Experiment files: typos and wrong types name the file and the field; the CLI exits non-zero."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleet.coordinator.config import ConfigError, load_experiment, parse_experiment
from fleet.coordinator.plan import plan_trials

MINIMAL = {
    "name": "t",
    "phones": [
        {"name": "a", "kind": "virtual", "cpu_threads": 1},
        {"name": "b", "kind": "virtual", "cpu_threads": 1},
    ],
    "models": [{"preset": "tiny"}],
    "paradigms": [{"kind": "per_app"}],
    "workloads": [
        {
            "name": "w",
            "duration_s": 5,
            "apps": [
                {
                    "name": "kb",
                    "arrival": {"kind": "poisson", "rate_per_s": 2},
                    "prompt_tokens": 8,
                    "output_tokens": 4,
                }
            ],
        }
    ],
}


def write(tmp_path: Path, data) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_embedded_default_is_valid_and_small():
    exp = load_experiment(None)
    assert len(exp.phones) == 2 and exp.paradigms[0].kind == "per_app"
    assert exp.models[0].preset == "smollm-135m"
    assert len(exp.workloads[0].apps) == 3


def test_misspelled_key_names_file_and_field(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["phones"][0]["memroy_budget_mb"] = 100
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert str(path) in str(err.value)
    assert "phones.0.virtual.memroy_budget_mb: unknown field" in str(err.value)


def test_wrong_type_names_the_field(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["workloads"][0]["duration_s"] = "long"
    with pytest.raises(ConfigError, match=r"workloads\.0\.duration_s"):
        load_experiment(write(tmp_path, data))


def test_unknown_paradigm_kind_is_refused():
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["paradigms"] = [{"kind": "per-app"}]
    with pytest.raises(ConfigError, match="paradigms.0"):
        parse_experiment(data)


def test_multi_turn_needs_closed_loop_and_names_are_unique():
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["workloads"][0]["apps"][0]["multi_turn"] = True
    with pytest.raises(ConfigError, match="multi_turn needs closed_loop"):
        parse_experiment(data)
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["phones"][1]["name"] = "a"
    with pytest.raises(ConfigError, match="repeated: a"):
        parse_experiment(data)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(bad)


def test_plan_expands_the_grid_repetitions_outermost():
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["repetitions"] = 3
    exp = parse_experiment(data)
    trials = plan_trials(exp)
    assert len(trials) == 2 * 3
    assert len({t.trial_id for t in trials}) == 6
    assert [t.repetition for t in trials] == [0, 0, 1, 1, 2, 2]  # repetitions interleave
    assert [t.seq for t in trials] == list(range(6))


def test_removed_and_bad_fields_name_the_fix():
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["contention"] = {"solo_duration_s": 5}
    with pytest.raises(ConfigError, match="solo_duration_s was removed: a solo baseline"):
        parse_experiment(data)
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["trial_order"] = "random"
    with pytest.raises(ConfigError, match="trial_order"):
        parse_experiment(data)


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "fleet.coordinator.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_cli_misspelled_key_exits_non_zero_naming_it(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["workloads"][0]["apps"][0]["promt_tokens"] = 8
    path = write(tmp_path, data)
    proc = run_cli("run", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "promt_tokens" in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_cli_missing_file_is_one_line(tmp_path):
    proc = run_cli("run", "missing.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fleet: missing.yaml: no such experiment file"


def test_cli_plan_lists_trials(tmp_path):
    proc = run_cli("plan", str(write(tmp_path, MINIMAL)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "seq\ttrial\tphone\trequests\tduration_s"
    assert lines[1].startswith("0\tper_app.w.tiny.") and lines[1].endswith("\t5")


def test_a_workload_no_paradigm_can_hold_is_refused_up_front_with_the_numbers(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["phones"][0]["memory_budget_mb"] = 256
    data["models"] = [{"preset": "smollm-135m"}]
    proc = run_cli("plan", str(write(tmp_path, data)), cwd=tmp_path)
    assert proc.returncode == 2
    assert "phone a (256 MiB) cannot hold model smollm-135m (fp32) for app kb" in proc.stderr
    assert "weights 513.1 MiB" in proc.stderr
    assert "phone b" not in proc.stderr  # the 4096 MiB phone is fine


def test_apps_with_their_own_models_need_per_app(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["workloads"][0]["apps"][0]["model"] = {"preset": "tiny", "dtype": "bf16"}
    data["paradigms"] = [{"kind": "per_app"}, {"kind": "slmaas"}]
    proc = run_cli("plan", str(write(tmp_path, data)), cwd=tmp_path)
    assert proc.returncode == 2 and "only per_app can host" in proc.stderr
    data["paradigms"] = [
        {"kind": "per_app"},
        {"kind": "agent_os", "name": "aios-rr", "scheduler": "round_robin"},
        {"kind": "agent_os", "name": "aios-prio"},
    ]
    data["workloads"][0]["apps"][0].pop("model")
    proc = run_cli("plan", str(write(tmp_path, data)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert any("\taios-rr.w.tiny.a.corun.r0\t" in line for line in proc.stdout.splitlines())


@pytest.mark.parametrize(
    "name", ["default", "app-sweep", "gui-agent", "trace-replay"], ids=lambda n: n
)
def test_every_shipped_experiment_plans_and_fits(name):
    from importlib import resources

    from fleet.coordinator.plan import check_budgets

    folder = Path(str(resources.files("fleet.coordinator.experiments")))
    exp = load_experiment(folder / f"{name}.yaml")
    trials = plan_trials(exp)
    assert trials and all(t.trace for t in trials)
    assert check_budgets(exp.model_copy(update={"allow_shared_cores": True}), trials) == []


def test_android_phones_are_named_by_serial_or_model_and_nothing_else_reaches_a_shell():
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["phones"] = [
        {"name": "px", "kind": "android", "serial": "R58M123ABC"},
        {"name": "any7", "kind": "android", "model": "Pixel 7", "cooldown_below_c": 35},
        {"name": "emu", "kind": "android", "serial": "127.0.0.1:5555", "host": "hub-a"},
    ]
    exp = parse_experiment(data)
    assert [p.kind for p in exp.phones] == ["android"] * 3
    for bad, field in (
        ({"serial": "x;reboot"}, "serial"),
        ({"serial": "$(id)"}, "serial"),
        ({"model": "a`b`"}, "model"),
        ({"serial": "ok", "python": "/x; rm -rf /"}, "python"),
        ({}, "serial"),  # neither serial nor model
    ):
        data["phones"] = [{"name": "px", "kind": "android", **bad}]
        with pytest.raises(ConfigError, match=field):
            parse_experiment(data)
