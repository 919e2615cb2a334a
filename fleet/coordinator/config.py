"""Experiment files: pydantic models loaded from YAML, unknown keys rejected.

An experiment is paradigms x workloads x models x phones x repetitions. A typo is an error naming
the file and the field:

    exp = load_experiment("experiment.yaml")   # raises ConfigError("experiment.yaml: phones.0...")
    exp = load_experiment(None)                # the embedded default experiment
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from fleet import limits as L
from fleet.records import (
    AppWorkload,
    ArrivalPattern,
    ContextPolicy,
    ModelSpec,
    Paradigm,
    SchedulerPolicy,
    ServiceOptions,
    TraceRequest,
)
from fleet.sim_profile import BUILTIN, ProfileError, load_profile
from fleet.traces import TraceError, read_trace_file

DEFAULT_EXPERIMENT = "default.yaml"
NAME = L.NAME_PATTERN  # names end up in ids, paths and metric labels: one pattern everywhere


class ConfigError(Exception):
    """An experiment file that cannot be used; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# -- phones ----------------------------------------------------------------------------------


class VirtualPhone(Strict):
    """A phone emulated on a Linux host: the same agent, with a phone's budget and core count."""

    kind: Literal["virtual"] = "virtual"
    name: str = Field(pattern=NAME)
    memory_budget_mb: int = Field(
        4096, gt=0, le=1 << 24
    )  # memory the SLM processes together may use
    cpu_threads: int = Field(
        2, gt=0, le=L.MAX_THREADS
    )  # CPU threads the phone offers SLM inference
    host: str = "local"  # Ray node (IP) whose cores it uses; "local" = the driver's node
    # its flash: model files and swapped contexts are read cold from a real disk on its host,
    # throttled to this model (none: the host disk as it is; see fleet/storage_models.py)
    storage: Literal["none", "ufs3.1", "emmc5.1"] = "none"
    storage_dir: str = ""  # on its host; default ~/.cache/slm-fleet/phones/<name>


class RemotePhone(Strict):
    """An agent already running elsewhere (a real phone, or a phone agent started by hand)."""

    kind: Literal["remote"] = "remote"
    name: str = Field(pattern=NAME)
    address: str = Field(pattern=r"^[^:\s]+:\d+$")  # host:port of its gRPC server
    token_env: str = Field("FLEET_AGENT_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # TLS: the CA that signed the agent's certificate; empty = plaintext (refused beyond
    # loopback unless insecure: true). For mutual TLS, this host's client certificate and key.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    insecure: bool = False  # accept sending the token in the clear to a non-loopback address

    @model_validator(mode="after")
    def _tls(self):
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together (mutual TLS)")
        if self.tls_cert_file and not self.tls_ca_file:
            raise ValueError("a client certificate needs tls_ca_file (mutual TLS is TLS first)")
        if not self.tls_ca_file and not self.insecure and not _loopback(self.address):
            raise ValueError(
                f"{self.address} is not loopback and no tls_ca_file is given: the token would "
                "cross the network in the clear (give tls_ca_file, or insecure: true)"
            )
        return self

    def tls_files(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("ca", self.tls_ca_file),
                ("cert", self.tls_cert_file),
                ("key", self.tls_key_file),
            )
            if v
        }


class AndroidPhone(Strict):
    """A real phone on a lab host's USB hub (or an emulated one), reached through that host's adb
    server: the coordinator finds the host that has it, installs the agent (``prepare``), starts
    it with ``adb shell`` and reaches it through ``adb forward``. Named by serial, or by model
    (the first listed device of that model not taken by another entry)."""

    kind: Literal["android"] = "android"
    name: str = Field(pattern=NAME)
    serial: str = Field("", pattern=r"^$|^[A-Za-z0-9._:-]{1,64}$")  # as `adb devices` lists it
    model: str = Field("", pattern=r"^$|^[A-Za-z0-9 ._()-]{1,64}$")  # ro.product.model
    host: str = ""  # the Ray host that has it; default: whichever lists it
    memory_budget_mb: int = Field(4096, gt=0, le=1 << 24)
    cpu_threads: int = Field(4, gt=0, le=L.MAX_THREADS)
    python: str = Field(  # the runtime on the phone (see docs/android.md)
        "/data/local/tmp/slm-fleet/runtime/bin/python3", pattern=r"^/[A-Za-z0-9._/-]{1,200}$"
    )
    prepare: bool = True  # install or update the agent's code before the run
    # before every trial, wait until the battery is below this temperature (C); 0 = don't wait
    cooldown_below_c: float = Field(0.0, ge=0, le=80)
    cooldown_timeout_s: float = Field(600.0, gt=0, le=L.MAX_DURATION_S)

    @model_validator(mode="after")
    def _named(self):
        if not self.serial and not self.model:
            raise ValueError("give the phone's serial (as `fleet devices` lists it) or its model")
        return self


def _loopback(address: str) -> bool:
    import ipaddress

    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SimulatedPhone(Strict):
    """Phones that replay a measured profile instead of running models (agents/simulated): the
    real coordinator, store and Prometheus drive them, but every figure they report is a
    replay of the profile's measurements, and the results say ``simulated`` wherever they name
    the phone. Processes on the driver's host serve them, up to 250 phones each.

    ``count: N`` makes N phones named ``<name>-0000`` to ``<name>-<N-1>``."""

    kind: Literal["simulated"] = "simulated"
    name: str = Field(pattern=NAME)
    count: int = Field(1, ge=1, le=L.MAX_SIMULATED_PHONES)
    memory_budget_mb: int = Field(4096, gt=0, le=1 << 24)
    cpu_threads: int = Field(2, gt=0, le=L.MAX_THREADS)  # as its profile's phone had
    # a profile captured by `fleet profile capture RUN_DIR`, or the embedded one
    profile: str = BUILTIN

    @model_validator(mode="after")
    def _profile_loads(self, info: ValidationInfo):
        if self.profile == BUILTIN:
            return self
        base = Path((info.context or {}).get("base_dir") or Path.cwd())
        path = (base / self.profile).resolve()
        try:
            load_profile(str(path))
        except ProfileError as exc:
            raise ValueError(str(exc)) from None
        object.__setattr__(self, "profile", str(path))  # the agent reads it from anywhere
        return self


Phone = Annotated[
    Union[VirtualPhone, RemotePhone, AndroidPhone, SimulatedPhone], Field(discriminator="kind")
]


def _expand_counts(phones: object) -> object:
    """``count: N`` simulated phones as N entries, named ``<name>-0000`` and on."""
    if not isinstance(phones, list):
        return phones
    out: list[object] = []
    for p in phones:
        count = p.get("count", 1) if isinstance(p, dict) else 1
        if not (isinstance(p, dict) and p.get("kind") == "simulated" and isinstance(count, int)):
            out.append(p)
            continue
        if not 1 <= count <= L.MAX_SIMULATED_PHONES or count == 1:
            out.append(p)  # the field's own check names a bad count
            continue
        width = max(4, len(str(count - 1)))
        out.extend(
            {**p, "name": f"{p.get('name', '')}-{i:0{width}d}", "count": 1} for i in range(count)
        )
    return out


# -- paradigms -------------------------------------------------------------------------------


class PerAppConfig(Strict):
    """Every app loads its own model in its own process; a low-memory killer acts over budget."""

    paradigm: ClassVar[Paradigm] = Paradigm.PER_APP
    kind: Literal["per_app"] = "per_app"
    name: str = Field("", pattern=r"^$|" + NAME)  # label in results (default: the kind)
    # torch threads of each SLM process; unset: the phone's cores (the rule of every paradigm)
    threads_per_process: int | None = Field(None, gt=0, le=L.MAX_THREADS)

    @property
    def label(self) -> str:
        return self.name or self.kind

    def service_options(self) -> ServiceOptions:
        return ServiceOptions()  # an own model's options are the phone's rule (OWN_MODEL)


class SlmaasConfig(Strict):
    """One shared model service: continuous batching, shared-prefix reuse, FCFS."""

    paradigm: ClassVar[Paradigm] = Paradigm.SLMAAS
    kind: Literal["slmaas"] = "slmaas"
    name: str = Field("", pattern=r"^$|" + NAME)  # label in results (default: the kind)
    threads_per_process: int | None = Field(
        None, gt=0, le=L.MAX_THREADS
    )  # unset: the phone's cores
    max_batch_size: int = Field(8, gt=0, le=L.MAX_BATCH)  # most sequences in one forward pass
    # most prompt tokens of a sequence per step; 64 for both shared paradigms, chosen from
    # bench/prefill_chunk.py (the README has the sweep), so they differ in scheduling only
    prefill_chunk_tokens: int = Field(64, gt=0, le=L.MAX_CHUNK_TOKENS)
    prefix_cache: bool = True  # reuse the KV of an app's system prompt

    @property
    def label(self) -> str:
        return self.name or self.kind

    def service_options(self) -> ServiceOptions:
        return ServiceOptions(
            max_batch_size=self.max_batch_size,
            prefill_chunk_tokens=self.prefill_chunk_tokens,
            prefix_cache=self.prefix_cache,
        )  # FCFS, nothing kept: the rule


class AgentOsConfig(Strict):
    """The model service as an OS subsystem: priorities, preemption, kept and swapped contexts."""

    paradigm: ClassVar[Paradigm] = Paradigm.AGENT_OS
    kind: Literal["agent_os"] = "agent_os"
    name: str = Field("", pattern=r"^$|" + NAME)  # label in results (default: the kind)
    threads_per_process: int | None = Field(
        None, gt=0, le=L.MAX_THREADS
    )  # unset: the phone's cores
    scheduler: SchedulerPolicy = SchedulerPolicy.PRIORITY  # kept as this enum up to the engine
    # priority: a background request waiting this long is promoted until it finishes (0: strict)
    priority_aging_s: float = Field(1.0, ge=0, le=3600)
    quantum_tokens: int = Field(
        16, gt=0, le=L.MAX_CHUNK_TOKENS
    )  # round robin: steps before the next app leads
    max_batch_size: int = Field(8, gt=0, le=L.MAX_BATCH)
    prefill_chunk_tokens: int = Field(
        64, gt=0, le=L.MAX_CHUNK_TOKENS
    )  # a foreground request waits one chunk at most
    prefix_cache: bool = True
    persistent_contexts: bool = True  # keep multi-turn apps' KV between turns
    context_policy: ContextPolicy = ContextPolicy.SWAP  # how an evicted context comes back
    # KV held before idle contexts are evicted and admissions wait (0: the phone budget less the
    # service's own PSS, the same rule as SLMaaS)
    kv_budget_mb: int = Field(0, ge=0, le=L.MAX_KV_BUDGET_BYTES >> 20)

    @property
    def label(self) -> str:
        return self.name or self.kind

    def service_options(self) -> ServiceOptions:
        return ServiceOptions(
            scheduler=self.scheduler,
            max_batch_size=self.max_batch_size,
            prefill_chunk_tokens=self.prefill_chunk_tokens,
            prefix_cache=self.prefix_cache,
            persistent_contexts=self.persistent_contexts,
            context_policy=self.context_policy,
            kv_budget_bytes=self.kv_budget_mb * 2**20,
            quantum_tokens=self.quantum_tokens,
            priority_aging_s=self.priority_aging_s,
        )


ParadigmConfig = Annotated[
    Union[PerAppConfig, SlmaasConfig, AgentOsConfig], Field(discriminator="kind")
]


# -- models ----------------------------------------------------------------------------------


class ModelConfig(Strict):
    name: str = Field("", pattern=r"^$|" + NAME)  # label in results; defaults to preset/dir name
    preset: str = "smollm-135m"  # named shape with random weights
    path: str = ""  # local Hugging Face format directory with real weights
    dtype: Literal["fp32", "bf16", "int8"] = "fp32"  # int8: weight-only, computes in bf16
    seed: int = 0  # seed of the random weights

    @model_validator(mode="after")
    def _known_preset(self):
        from fleet.shapes import PRESETS

        if not self.path and self.preset not in PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))} "
                "(or give path: a local Hugging Face model directory)"
            )
        return self

    @property
    def label(self) -> str:
        return self.name or (Path(self.path).name if self.path else self.preset)

    def spec(self) -> ModelSpec:
        return ModelSpec(preset=self.preset, path=self.path, dtype=self.dtype, seed=self.seed)


# -- workloads -------------------------------------------------------------------------------


class PoissonArrival(Strict):
    """Open loop: exponential inter-arrival times, optionally several requests per arrival."""

    kind: Literal["poisson"] = "poisson"
    rate_per_s: float = Field(gt=0, le=L.MAX_RATE_PER_S)
    burst_size: int = Field(1, ge=1, le=L.MAX_BURST)


class ClosedLoopArrival(Strict):
    """Closed loop: the next request follows the previous response after a think time."""

    kind: Literal["closed_loop"] = "closed_loop"
    think_time_s: float = Field(0.0, ge=0, le=L.MAX_THINK_S)


class TraceArrival(Strict):
    """Open loop, replayed: arrival times, sizes and sessions from a JSONL trace file (format in
    ``fleet/traces.py`` and the README), relative to the experiment file's folder."""

    kind: Literal["trace"] = "trace"
    path: str = Field(min_length=1)
    _requests: tuple[TraceRequest, ...] = PrivateAttr(())

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo):
        base = Path((info.context or {}).get("base_dir", "."))
        path = Path(self.path) if Path(self.path).is_absolute() else base / self.path
        try:
            self._requests = read_trace_file(path, app="")
        except TraceError as exc:
            raise ValueError(str(exc)) from None
        return self

    def requests(self, app: str, duration_s: float) -> tuple[TraceRequest, ...]:
        """The file's requests that arrive within the duration, as app ``app``'s."""
        return tuple(  # sessions are the app's own: copies of one file never share a context
            TraceRequest(
                app,
                r.index,
                r.at_s,
                r.prompt_tokens,
                r.output_tokens,
                f"{app}:{r.session}" if r.session else "",
                r.turn,
            )
            for r in self._requests
            if r.at_s is not None and r.at_s < duration_s
        )


Arrival = Annotated[
    Union[PoissonArrival, ClosedLoopArrival, TraceArrival], Field(discriminator="kind")
]
PATTERNS = {
    "poisson": ArrivalPattern.POISSON,
    "closed_loop": ArrivalPattern.CLOSED_LOOP,
    "trace": ArrivalPattern.TRACE,
}


class AppConfig(Strict):
    name: str = Field(pattern=NAME)
    arrival: Arrival
    prompt_tokens: int = Field(
        0, ge=0, le=L.MAX_REQUEST_TOKENS
    )  # required, except with a trace (the trace's sizes)
    output_tokens: int = Field(0, ge=0, le=L.MAX_REQUEST_TOKENS)
    max_outstanding: int = Field(
        0, ge=0, le=L.MAX_OUTSTANDING
    )  # open loop: requests in flight before drops (0: any)
    multi_turn: bool = False  # closed loop: each turn's prompt carries the previous turns
    turns_per_session: int = Field(
        0, ge=0, le=L.MAX_TURNS
    )  # multi-turn: a new conversation/task after N turns
    system_prompt_tokens: int = Field(
        0, ge=0, le=L.MAX_REQUEST_TOKENS
    )  # a fixed prefix of every prompt of the app
    max_requests: int = Field(
        0, ge=0, le=L.MAX_TRACE_REQUESTS
    )  # 0 = until the workload's duration ends
    foreground: bool = False
    slo_ttft_ms: float = Field(0.0, ge=0, le=L.MAX_SLO_S * 1000)
    model: ModelConfig | None = None  # per-app only: this app ships its own, different model

    @model_validator(mode="after")
    def _consistent(self):
        if self.multi_turn and self.arrival.kind != "closed_loop":
            raise ValueError("multi_turn needs closed_loop arrivals (a trace has sessions)")
        if self.arrival.kind != "trace" and (self.prompt_tokens < 1 or self.output_tokens < 1):
            raise ValueError("prompt_tokens and output_tokens must be >= 1")
        return self

    def workload(self) -> AppWorkload:
        a = self.arrival
        prompt, output = self.prompt_tokens, self.output_tokens
        if isinstance(a, TraceArrival):  # size the model for the trace's largest request
            reqs = a.requests(self.name, float("inf"))
            prompt = max(prompt, *(r.prompt_tokens for r in reqs))
            output = max(output, *(r.output_tokens for r in reqs))
        return AppWorkload(
            name=self.name,
            pattern=PATTERNS[a.kind],
            rate_per_s=getattr(a, "rate_per_s", 0.0),
            burst_size=getattr(a, "burst_size", 1),
            think_time_s=getattr(a, "think_time_s", 0.0),
            prompt_tokens=prompt,
            output_tokens=output,
            multi_turn=self.multi_turn,
            max_requests=self.max_requests,
            foreground=self.foreground,
            slo_ttft_s=self.slo_ttft_ms / 1000.0,
            turns_per_session=self.turns_per_session,
            system_prompt_tokens=self.system_prompt_tokens,
            model=self.model.spec() if self.model else None,
            max_outstanding=self.max_outstanding,
        )

    def renamed(self, name: str) -> AppConfig:
        return self.model_copy(update={"name": name})


class WorkloadConfig(Strict):
    name: str = Field(pattern=NAME)
    duration_s: float = Field(gt=0, le=L.MAX_DURATION_S)  # apps stop submitting after this long
    max_context_tokens: int = Field(
        1024, gt=0, le=L.MAX_CONTEXT_TOKENS
    )  # KV cache positions reserved per context
    apps: list[AppConfig] = Field(min_length=1, max_length=L.MAX_APPS)

    @model_validator(mode="after")
    def _unique_apps(self):
        _unique([a.name for a in self.apps], "app")
        expected = sum(
            a.arrival.rate_per_s * a.arrival.burst_size * self.duration_s
            for a in self.apps
            if isinstance(a.arrival, PoissonArrival)
        )
        if expected > L.MAX_TRACE_REQUESTS:
            raise ValueError(
                f"its Poisson apps would send about {expected:,.0f} requests in duration_s; "
                f"a trial may hold at most {L.MAX_TRACE_REQUESTS:,} (lower the rates or duration_s)"
            )
        return self


# -- contention methodology ------------------------------------------------------------------


class ContentionConfig(Strict):
    """Which app mixes every (paradigm, workload, model, phone, repetition) runs."""

    solo_baselines: bool = True  # each app alone, replaying its co-run requests: the baseline
    corun: bool = True  # all of the workload's apps together
    app_counts: list[int] = Field(
        default_factory=list, max_length=L.MAX_APPS
    )  # sweep: the first k apps (cycled)

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data):
        if isinstance(data, dict) and "solo_duration_s" in data:
            raise ValueError(
                "solo_duration_s was removed: a solo baseline now replays its app's co-run "
                "requests over the workload's duration"
            )
        return data

    @model_validator(mode="after")
    def _positive_counts(self):
        if any(k < 1 for k in self.app_counts):
            raise ValueError("app_counts must be >= 1")
        return self


# -- experiment ------------------------------------------------------------------------------


class Experiment(Strict):
    name: str = Field(pattern=NAME)
    description: str = ""
    seed: int = 0  # seeds arrivals and prompts; repetition r uses seed + r
    repetitions: int = Field(1, ge=1, le=L.MAX_REPETITIONS)
    # phones on one host get disjoint cores; true lets them share (results are marked)
    allow_shared_cores: bool = False
    # within each repetition: shuffled by the seed; interleaved (for each app mix, every
    # paradigm in turn); sequential (paradigm by paradigm, as listed)
    trial_order: Literal["shuffled", "interleaved", "sequential"] = "shuffled"
    cooldown_s: float = Field(0.0, ge=0, le=600)  # idle pause between a phone's trials
    # most trial starts a second across the fleet: a large fleet's trials start over
    # phones / rate seconds instead of in one burst that the coordinator would queue
    start_rate_per_s: float = Field(50.0, gt=0, le=10_000)
    drain_s: float = Field(
        30.0, gt=0, le=L.MAX_DRAIN_S
    )  # in-flight requests' time to finish after the end
    min_samples: int = Field(20, ge=1)  # a statistic over fewer requests is shown as "n<20"
    sample_interval_s: float = Field(
        0.25, ge=L.MIN_SAMPLE_INTERVAL_S, le=L.MAX_SAMPLE_INTERVAL_S
    )  # memory sampler interval on the phones
    heartbeat_s: float = Field(
        5.0, gt=0, le=3600
    )  # how often the coordinator health-checks each phone
    contention: ContentionConfig = Field(
        default_factory=lambda: ContentionConfig.model_validate({"solo_baselines": False})
    )
    phones: list[Phone] = Field(min_length=1)
    models: list[ModelConfig] = Field(min_length=1)
    paradigms: list[ParadigmConfig] = Field(min_length=1)
    workloads: list[WorkloadConfig] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _simulated_counts(cls, data):
        if isinstance(data, dict) and "phones" in data:
            data = {**data, "phones": _expand_counts(data["phones"])}
        return data

    @model_validator(mode="after")
    def _bounded_plan(self):
        per_rep = (
            len(self.phones)
            * len(self.paradigms)
            * len(self.models)
            * sum(
                (len(w.apps) if self.contention.solo_baselines else 0)
                + int(self.contention.corun)
                + len(self.contention.app_counts)
                for w in self.workloads
            )
        )
        if per_rep * self.repetitions > L.MAX_TRIALS:
            raise ValueError(
                f"the plan holds about {per_rep * self.repetitions:,} trials; at most "
                f"{L.MAX_TRIALS:,} (fewer repetitions, phones, paradigms, models or workloads)"
            )
        return self

    @model_validator(mode="after")
    def _unique_names(self):
        _unique([p.name for p in self.phones], "phone")
        _unique([m.label for m in self.models], "model")
        _unique([w.name for w in self.workloads], "workload")
        _unique([p.label for p in self.paradigms], "paradigm")
        return self


def _unique(names: list[str], what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(dupes)}")


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def parse_experiment(
    data: object, source: str = "<experiment>", base_dir: Path | None = None
) -> Experiment:
    """Validate an experiment; trace files are read relative to ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of experiment fields at the top level")
    try:
        return Experiment.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def experiment_dir(path: str | Path | None) -> Path:
    """The folder an experiment's relative paths (trace files) are read from."""
    if path is None:
        return Path(str(resources.files("fleet.coordinator.experiments")))
    return Path(path).resolve().parent


def load_experiment(path: str | Path | None) -> Experiment:
    experiments = resources.files("fleet.coordinator.experiments")
    if path is None:
        text = experiments.joinpath(DEFAULT_EXPERIMENT).read_text()
        source = f"(embedded) {DEFAULT_EXPERIMENT}"
        base = Path(str(experiments))
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such experiment file")
        text, source, base = p.read_text(encoding="utf-8"), str(p), p.parent
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    return parse_experiment(data, source, base)
