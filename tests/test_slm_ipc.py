"""The app <-> model IPC against a real model process (tiny model) on a Unix socket."""

from __future__ import annotations

import socket
import time

import pytest

from agents.modelservice import slm_ipc
from agents.modelservice.launch_spec import LaunchSpec
from agents.modelservice.model_process import ModelProcess
from fleet import wire
from fleet.records import ModelSpec, ServeCall, ServiceOptions
from fleet.v1 import slm_service_pb2 as spb


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ipc") / "m.sock"
    proc = ModelProcess(path, LaunchSpec(ModelSpec(preset="tiny"), ServiceOptions(), threads=1))
    proc.start()
    yield path
    proc.stop()


def _call(n_out: int) -> spb.SlmCall:
    call = ServeCall("r", "kb", [1, 2, 3, 4], n_out)
    return spb.SlmCall(generate=wire.serve_call_to_pb(call))


def test_a_caller_that_reads_late_still_gets_every_token(model):
    """The engine never blocks on a caller: what its socket cannot take waits in order."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    sock.connect(str(model))
    sock.sendall(slm_ipc.frame(_call(500)))
    time.sleep(3.0)  # the model finishes long before this caller reads a byte
    replies = slm_ipc._Replies(sock, time.monotonic() + 60, lambda: False)
    tokens, completion = [], None
    while completion is None:
        for msg in replies.batch() or []:
            if msg.WhichOneof("reply") == "tokens":
                tokens += list(msg.tokens.ids)
            else:
                assert msg.WhichOneof("reply") == "completion", msg
                completion = msg.completion
    sock.close()
    assert len(tokens) == 500 and completion.service.slices


def test_bad_calls_are_refused_with_a_reason_and_the_connection_is_kept_or_closed(model):
    client = slm_ipc.SlmClient(str(model))
    with pytest.raises(slm_ipc.SlmCallError, match="INVALID_ARGUMENT: .*positions"):
        client.generate(_call(10_000).generate, lambda ids: None, lambda: False, 30.0)
    got: list[int] = []
    done = client.generate(_call(3).generate, got.extend, lambda: False, 30.0)
    assert done is not None and len(got) == 3
    assert client.stats(5.0).stats.num_steps >= 3  # the same pooled connection serves a stats call
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(model))
    sock.sendall(slm_ipc.HEADER.pack(3) + b"\xff\xff\xff")  # not an SlmCall
    msg = slm_ipc._Replies(sock, time.monotonic() + 10, lambda: False).batch()[0]
    assert msg.error.code == "INVALID_ARGUMENT" and "SlmCall" in msg.error.details
    assert sock.recv(1) == b""  # then it closes
    sock.close()
    client.close()
