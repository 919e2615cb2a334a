"""Property-based fuzzing (Hypothesis) of the agent's wire and of experiment files.

Every RPC of fleet.v1.PhoneAgentService gets random messages built from its descriptor (odd
numbers, NaN and infinities, path-like names, absurd counts) and random bytes, sent over real
gRPC to a real agent whose memory budget is too small for any model, so no case can make it
spawn a process. The properties: the agent never crashes and stays healthy, every answer is OK
or a rejection with a code that says why (never UNKNOWN or INTERNAL) and a reason, and it has
no child process afterwards. Experiment files: random edits of the default experiment either
load or raise ConfigError naming the file, never anything else.

The fast run tries a few hundred cases; ``-m slow`` runs the 10,000-case versions.
"""

from __future__ import annotations

import collections
import copy
import math

import grpc
import psutil
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOKEN, agent_process
from fleet.coordinator.config import ConfigError, parse_experiment
from fleet.v1 import agent_pb2 as pb

SERVICE = "/fleet.v1.PhoneAgentService/"
METHODS = {
    "Describe": (pb.DescribeRequest, False),
    "Deploy": (pb.DeployRequest, False),
    "RunWorkload": (pb.RunWorkloadRequest, True),
    "Stop": (pb.StopRequest, False),
    "Reset": (pb.ResetRequest, False),
}
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}
ODD_INTS = [0, 1, 2, 7, 255, 2**31 - 1, 2**32 - 1, 2**53, 2**63 - 1]
ODD_FLOATS = [0.0, -0.0, 1e-9, 0.5, 3.0, 1e12, 1e300, -1.0, math.inf, -math.inf, math.nan]
ODD_TEXT = ["", "a", "tiny", "kb", "../../x", "/etc/passwd", "a" * 300, "é\x00", "smollm-135m"]


def _scalar(fd):
    t = fd.type
    if t in (fd.TYPE_DOUBLE, fd.TYPE_FLOAT):
        return st.one_of(st.sampled_from(ODD_FLOATS), st.floats(allow_nan=True, width=32))
    if t == fd.TYPE_BOOL:
        return st.booleans()
    if t == fd.TYPE_STRING:
        return st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=20))
    if t == fd.TYPE_BYTES:
        return st.binary(max_size=20)
    if t == fd.TYPE_ENUM:
        return st.integers(0, 8)
    unsigned = t in (fd.TYPE_UINT32, fd.TYPE_UINT64, fd.TYPE_FIXED32, fd.TYPE_FIXED64)
    bits = 32 if t in (fd.TYPE_UINT32, fd.TYPE_INT32, fd.TYPE_SINT32, fd.TYPE_FIXED32,
                       fd.TYPE_SFIXED32) else 64  # fmt: skip
    lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.one_of(st.sampled_from([v for v in ODD_INTS if lo <= v <= hi]), st.integers(lo, hi))


def messages(cls, depth: int = 0):
    """A strategy for random instances of a protobuf message class, fields set or not."""
    fields = {}
    for fd in cls.DESCRIPTOR.fields:
        if fd.message_type is not None:
            if depth >= 3:
                continue
            sub = messages(fd.message_type._concrete_class, depth + 1)
            value = st.lists(sub, max_size=3) if fd.is_repeated else sub
        else:
            value = st.lists(_scalar(fd), max_size=4) if fd.is_repeated else _scalar(fd)
        fields[fd.name] = st.one_of(st.none(), value)

    def build(values):
        m = cls()
        for name, v in values.items():
            if v is None:
                continue
            fd = cls.DESCRIPTOR.fields_by_name[name]
            if fd.message_type is not None:
                (getattr(m, name).extend(v) if fd.is_repeated else getattr(m, name).CopyFrom(v))
            elif fd.is_repeated:
                getattr(m, name).extend(v)
            else:
                setattr(m, name, v)
        return m

    return st.fixed_dictionaries(fields).map(build)


CALLS = st.one_of(
    *(
        st.tuples(st.just(name), messages(cls).map(lambda m: m.SerializeToString()))
        for name, (cls, _) in METHODS.items()
    ),
    st.tuples(st.sampled_from(sorted(METHODS)), st.binary(max_size=64)),  # maybe no protobuf
)


@pytest.fixture(scope="module")
def tiny_agent():
    with agent_process("--name", "fuzz-phone", "--memory-budget-mb", "1", "--cpu-threads", "1",
                       "--storage-dir", "none") as (address, proc):  # fmt: skip
        yield address, proc


def _fuzz_agent(tiny_agent, cases: int) -> None:
    address, proc = tiny_agent
    channel = grpc.insecure_channel(address)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    codes: collections.Counter = collections.Counter()

    @settings(max_examples=cases, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(CALLS)
    def one(call):
        method, payload = call
        streaming = METHODS[method][1]
        fn = (channel.unary_stream if streaming else channel.unary_unary)(SERVICE + method)
        try:
            answer = fn(payload, metadata=auth, timeout=20)
            if streaming:
                list(answer)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
        codes[code.name] += 1
        assert code in ALLOWED, (method, payload, code, details)
        assert code is grpc.StatusCode.OK or details, (method, code)
        assert proc.poll() is None, "the agent died"

    one()
    channel.close()
    print(f"\nwire fuzz: {sum(codes.values())} cases, by code: {dict(codes)}")
    assert not psutil.Process(proc.pid).children(recursive=True), "a case spawned a process"
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_wire_fuzz_fast(tiny_agent):
    _fuzz_agent(tiny_agent, 300)


@pytest.mark.long  # 300 cases run in `make test` (above); 10,000 in `make test-long` and CI
def test_wire_fuzz_10k(tiny_agent):
    _fuzz_agent(tiny_agent, 10_000)


# -- experiment files --------------------------------------------------------------------------

from importlib import resources  # noqa: E402

DEFAULT = yaml.safe_load(
    resources.files("fleet.coordinator.experiments").joinpath("default.yaml").read_text()
)
ODD_VALUES = st.one_of(
    st.sampled_from([None, True, -1, 0, 2**40, 1e308, math.inf, math.nan, "", "../../x", [], {}]),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


PATHS = [p for p in _paths(DEFAULT) if p]


def _fuzz_experiments(cases: int) -> None:
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=cases, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.lists(st.tuples(st.sampled_from(PATHS), ODD_VALUES, st.booleans()), max_size=3))
    def one(edits):
        data = copy.deepcopy(DEFAULT)
        for path, value, rename in edits:
            node = data
            try:
                for key in path[:-1]:
                    node = node[key]
                if rename and isinstance(node, dict) and path[-1] in node:
                    node[f"{path[-1]}x"] = node.pop(path[-1])  # a typo in a key
                else:
                    node[path[-1]] = value
            except (KeyError, IndexError, TypeError):
                continue
        try:
            parse_experiment(data, "fuzz.yaml")
            outcomes["loaded"] += 1
        except ConfigError as err:
            assert str(err).startswith("fuzz.yaml"), err
            outcomes["refused"] += 1

    one()
    print(f"\nexperiment fuzz: {sum(outcomes.values())} cases: {dict(outcomes)}")


def test_experiment_fuzz_fast():
    _fuzz_experiments(300)


@pytest.mark.long  # 300 cases run in `make test` (above); 10,000 in `make test-long` and CI
def test_experiment_fuzz_10k():
    _fuzz_experiments(10_000)
