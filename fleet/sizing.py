"""The one sizing rule: what a deployment holds, and whether it can fit a phone at all.

A model instance needs its weights plus the KV cache of one context. Per-app holds one instance
per app (over the budget, its low-memory killer acts); a shared service holds the weights once and
one context per app. A deployment is refused when even one instance with one context exceeds the
phone's budget: no paradigm could serve it. The coordinator checks this before a run, the phone
before it loads anything; both call these functions.

    need = footprints(spec, profile)          # {app: Footprint}; raises BudgetError
    planned = planned_bytes(spec, profile)    # by paradigm
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.records import AppWorkload, DeploySpec, ModelSpec, Paradigm, PhoneProfile
from fleet.shapes import model_args, model_label

MIB = 1024 * 1024
DEFAULT_CONTEXT_TOKENS = 2048  # an unbounded multi-turn app's window when none is configured


class BudgetError(Exception):
    """The deployment cannot fit the phone's memory budget (-> RESOURCE_EXHAUSTED)."""


class ServingError(ValueError):
    """The deployment asks a paradigm for something it cannot do (-> INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class Footprint:
    weight_bytes: int  # one instance of the app's model
    kv_bytes: int  # one context of the app, at its longest


def fmt_mib(num_bytes: int) -> str:
    return f"{num_bytes / MIB:.1f} MiB"


def app_model(spec: DeploySpec, app: AppWorkload) -> ModelSpec:
    """The model an app is served by: its own (per-app only) or the deployment's."""
    return app.model or spec.model


def context_tokens(spec: DeploySpec, app: AppWorkload, max_position: int) -> int:
    """KV positions one app's context may reach."""
    wanted = spec.max_context_tokens or app.max_context_tokens() or DEFAULT_CONTEXT_TOKENS
    return max(
        app.system_prompt_tokens + app.prompt_tokens + app.output_tokens, min(wanted, max_position)
    )


def check_servable(spec: DeploySpec) -> None:
    """Only per-app can host apps that bring models of their own."""
    own = [a.name for a in spec.apps if a.model and a.model != spec.model]
    if own and spec.paradigm is not Paradigm.PER_APP:
        raise ServingError(
            f"apps {own} bring their own model: only per_app can host that; "
            f"{spec.paradigm.value} serves every app with one model"
        )


def footprints(spec: DeploySpec, profile: PhoneProfile) -> dict[str, Footprint]:
    """{app: Footprint}; raises BudgetError when one model instance with one context of an app
    cannot fit the phone, or a request cannot fit the model's positions."""
    need = {}
    budget = profile.memory_budget_bytes
    for app in spec.apps:
        model = app_model(spec, app)
        args = model_args(model)
        if app.system_prompt_tokens + app.prompt_tokens + app.output_tokens > args.max_position:
            raise BudgetError(
                f"app {app.name}: system prompt + prompt + output tokens exceed "
                f"model {model_label(model)}'s {args.max_position} positions"
            )
        weights = args.weight_bytes(model.dtype)
        kv = args.kv_cache_bytes(context_tokens(spec, app, args.max_position), model.dtype)
        if budget and weights + kv > budget:
            raise BudgetError(
                f"phone {profile.name} ({budget / MIB:.0f} MiB) cannot hold model "
                f"{model_label(model)} ({model.dtype}) for app {app.name} under any paradigm: "
                f"weights {fmt_mib(weights)} + one context's KV cache {fmt_mib(kv)} = "
                f"{fmt_mib(weights + kv)} > budget {fmt_mib(budget)}"
            )
        need[app.name] = Footprint(weights, kv)
    return need


def planned_bytes(spec: DeploySpec, profile: PhoneProfile) -> int:
    """Bytes the deployment will hold (weights + KV caches), after the checks above."""
    check_servable(spec)
    need = footprints(spec, profile)
    kv = sum(f.kv_bytes for f in need.values())
    if spec.paradigm is Paradigm.PER_APP:
        return sum(f.weight_bytes for f in need.values()) + kv  # over budget, the LMK acts
    return next(iter(need.values())).weight_bytes + kv
