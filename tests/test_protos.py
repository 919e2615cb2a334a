"""The committed stubs must be exactly what scripts/gen_protos.py makes from protos/."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generate(out: Path) -> list[Path]:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.generate(out)


def test_committed_stubs_match_the_proto_sources(tmp_path):
    generated = _generate(tmp_path)
    assert {p.name for p in generated} == {
        "agent_pb2.py",
        "agent_pb2.pyi",
        "agent_pb2_grpc.py",
        "slm_service_pb2.py",
        "slm_service_pb2.pyi",
        "slm_service_pb2_grpc.py",
    }
    for fresh in generated:
        committed = ROOT / "fleet" / "v1" / fresh.name
        assert committed.is_file(), f"{committed} is missing: run scripts/gen_protos.py"
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.relative_to(ROOT)} drifted from protos/: run scripts/gen_protos.py"
        )


def test_proto_follows_buf_conventions():
    text = (ROOT / "protos" / "fleet" / "v1" / "agent.proto").read_text()
    assert "package fleet.v1;" in text
    from fleet.v1 import agent_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["PhoneAgentService"]
    for method in service.methods:
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"
        assert f"// {method.name} " in text, f"rpc {method.name} has no comment"
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        prefix = "".join("_" + c if c.isupper() else c for c in enum.name).lstrip("_").upper()
        assert enum.values[0].name == f"{prefix}_UNSPECIFIED" and enum.values[0].number == 0
        assert all(v.name.startswith(prefix + "_") for v in enum.values)
