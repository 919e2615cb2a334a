from fleet.v1 import agent_pb2 as _agent_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SlmCall(_message.Message):
    __slots__ = ("generate", "stats")
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    generate: GenerateRequest
    stats: StatsRequest
    def __init__(self, generate: _Optional[_Union[GenerateRequest, _Mapping]] = ..., stats: _Optional[_Union[StatsRequest, _Mapping]] = ...) -> None: ...

class SlmReply(_message.Message):
    __slots__ = ("tokens", "completion", "stats", "error")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    tokens: TokenChunk
    completion: Completion
    stats: StatsResponse
    error: CallError
    def __init__(self, tokens: _Optional[_Union[TokenChunk, _Mapping]] = ..., completion: _Optional[_Union[Completion, _Mapping]] = ..., stats: _Optional[_Union[StatsResponse, _Mapping]] = ..., error: _Optional[_Union[CallError, _Mapping]] = ...) -> None: ...

class CallError(_message.Message):
    __slots__ = ("code", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: str
    details: str
    def __init__(self, code: _Optional[str] = ..., details: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("app", "request_id", "prompt_tokens", "max_new_tokens", "foreground", "session", "shared_prefix_tokens")
    APP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FOREGROUND_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SHARED_PREFIX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    app: str
    request_id: str
    prompt_tokens: _containers.RepeatedScalarFieldContainer[int]
    max_new_tokens: int
    foreground: bool
    session: str
    shared_prefix_tokens: int
    def __init__(self, app: _Optional[str] = ..., request_id: _Optional[str] = ..., prompt_tokens: _Optional[_Iterable[int]] = ..., max_new_tokens: _Optional[int] = ..., foreground: _Optional[bool] = ..., session: _Optional[str] = ..., shared_prefix_tokens: _Optional[int] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("scheduled_ns", "service")
    SCHEDULED_NS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    scheduled_ns: int
    service: _agent_pb2.ServiceFacts
    def __init__(self, scheduled_ns: _Optional[int] = ..., service: _Optional[_Union[_agent_pb2.ServiceFacts, _Mapping]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("stats", "events")
    STATS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    stats: _agent_pb2.ServiceStats
    events: _containers.RepeatedCompositeFieldContainer[_agent_pb2.PhoneEvent]
    def __init__(self, stats: _Optional[_Union[_agent_pb2.ServiceStats, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_agent_pb2.PhoneEvent, _Mapping]]] = ...) -> None: ...
