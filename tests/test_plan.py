"""fleet.coordinator.plan and the one sizing rule (fleet.sizing) it shares with the phones."""

from __future__ import annotations

import pytest

from fleet.coordinator.config import parse_experiment
from fleet.coordinator.plan import check_budgets, core_domain, plan_trials
from fleet.records import (
    AppWorkload,
    DeploySpec,
    ModelSpec,
    Paradigm,
    PhoneProfile,
    SchedulerPolicy,
    ServiceOptions,
    effective_service_options,
)
from fleet.shapes import ModelArgs
from fleet.sizing import BudgetError, ServingError, footprints, planned_bytes


def experiment(**changes):
    exp = {
        "name": "c",
        "phones": [{"name": "p", "kind": "virtual", "memory_budget_mb": 4096}],
        "models": [{"preset": "tiny"}],
        "paradigms": [{"kind": "per_app"}],
        "workloads": [
            {
                "name": "w",
                "duration_s": 5,
                "apps": [
                    {
                        "name": "a",
                        "arrival": {"kind": "closed_loop"},
                        "prompt_tokens": 4,
                        "output_tokens": 2,
                    }
                ],
            }
        ],
    }
    exp.update(changes)
    return parse_experiment(exp)


def test_plan_expands_solo_corun_and_sweep():
    exp = parse_experiment(
        {
            "name": "c",
            "repetitions": 2,
            "contention": {"solo_baselines": True, "solo_duration_s": 2, "app_counts": [1, 4]},
            "phones": [{"name": "p", "kind": "virtual"}],
            "models": [{"preset": "tiny"}],
            "paradigms": [{"kind": "per_app"}, {"kind": "slmaas"}, {"kind": "agent_os"}],
            "workloads": [
                {
                    "name": "w",
                    "duration_s": 5,
                    "apps": [
                        {
                            "name": "a",
                            "arrival": {"kind": "closed_loop"},
                            "prompt_tokens": 4,
                            "output_tokens": 2,
                        },
                        {
                            "name": "b",
                            "arrival": {"kind": "closed_loop"},
                            "prompt_tokens": 4,
                            "output_tokens": 2,
                        },
                    ],
                }
            ],
        }
    )
    trials = plan_trials(exp)
    assert len(trials) == 2 * 3 * (2 + 1 + 2)
    mixes = [t.mix for t in trials[:5]]
    assert mixes == ["solo:a", "solo:b", "corun", "apps:1", "apps:4"]
    assert trials[0].duration_s == 2 and trials[2].duration_s == 5
    sweep4 = trials[4]
    assert [a.name for a in sweep4.apps] == ["a", "b", "a-2", "b-2"]
    assert trials[5].deploy_spec().service.scheduler.value == "fcfs"
    agent_os = next(t for t in trials if t.paradigm.kind == "agent_os")
    spec = agent_os.deploy_spec()
    assert spec.service.scheduler.value == "priority" and spec.service.persistent_contexts


def test_the_scheduler_keeps_one_enum_from_the_file_to_the_deploy_spec():
    exp = experiment(paradigms=[{"kind": "agent_os", "scheduler": "round_robin"}])
    assert exp.paradigms[0].scheduler is SchedulerPolicy.ROUND_ROBIN
    assert plan_trials(exp)[0].deploy_spec().service.scheduler is SchedulerPolicy.ROUND_ROBIN


def test_paradigm_defaults_are_decided_in_one_place():
    asked = ServiceOptions(scheduler=SchedulerPolicy.PRIORITY, persistent_contexts=True)
    slmaas = effective_service_options(Paradigm.SLMAAS, asked)
    assert slmaas.scheduler is SchedulerPolicy.FCFS and not slmaas.persistent_contexts
    assert effective_service_options(Paradigm.AGENT_OS, asked) == asked
    own = effective_service_options(Paradigm.PER_APP, asked)
    assert own.max_batch_size == 1 and not own.prefix_cache


def test_budget_check_uses_the_phones_rule():
    tiny = ModelArgs.from_name("smollm-135m")
    spec = DeploySpec(
        Paradigm.SLMAAS,
        ModelSpec(preset="smollm-135m"),
        (AppWorkload("a"), AppWorkload("b")),
        max_context_tokens=256,
    )
    need = footprints(spec, PhoneProfile("p", memory_budget_bytes=4 << 30))
    assert need["a"].weight_bytes == tiny.weight_bytes("fp32")
    assert need["a"].kv_bytes == tiny.kv_cache_bytes(256, "fp32")
    # a shared service holds the weights once, per-app once per app
    shared = planned_bytes(spec, PhoneProfile("p"))
    per_app = planned_bytes(
        DeploySpec(Paradigm.PER_APP, spec.model, spec.apps, 256), PhoneProfile("p")
    )
    assert per_app - shared == tiny.weight_bytes("fp32")
    with pytest.raises(BudgetError, match="cannot hold model smollm-135m"):
        footprints(spec, PhoneProfile("small", memory_budget_bytes=100 << 20))


def test_own_models_only_under_per_app():
    own = AppWorkload("a", model=ModelSpec(preset="tiny", dtype="bf16"))
    spec = DeploySpec(Paradigm.SLMAAS, ModelSpec(preset="tiny"), (own,))
    with pytest.raises(ServingError, match="only per_app"):
        planned_bytes(spec, PhoneProfile("p"))


def test_check_budgets_lists_each_problem_once():
    exp = experiment(
        phones=[{"name": "p", "kind": "virtual", "memory_budget_mb": 64}],
        models=[{"preset": "smollm-135m"}],
        repetitions=3,
    )
    problems = check_budgets(exp, plan_trials(exp))
    assert len(problems) == 1 and "phone p (64 MiB) cannot hold model smollm-135m" in problems[0]
    assert check_budgets(experiment(), plan_trials(experiment())) == []


def test_core_domains():
    exp = experiment(
        phones=[
            {"name": "a", "kind": "virtual"},
            {"name": "b", "kind": "virtual"},
            {"name": "r", "kind": "remote", "address": "127.0.0.1:1"},
        ]
    )
    assert core_domain(exp, "a") == core_domain(exp, "b") == "host:local"
    assert core_domain(exp, "r") == "phone:r"
