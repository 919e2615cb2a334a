"""The paradigms this agent implements, by name: the one place that knows every implementation.

host = make_paradigm(Paradigm.AGENT_OS, profile)
"""

from __future__ import annotations

from agents.paradigms.base import ParadigmHost
from agents.paradigms.per_app import PerAppParadigm
from agents.paradigms.shared_service import AgentOsParadigm, SlmaasParadigm
from fleet.records import Paradigm, PhoneProfile

PARADIGMS: dict[Paradigm, type[ParadigmHost]] = {
    Paradigm.PER_APP: PerAppParadigm,
    Paradigm.SLMAAS: SlmaasParadigm,
    Paradigm.AGENT_OS: AgentOsParadigm,
}


def make_paradigm(paradigm: Paradigm, profile: PhoneProfile) -> ParadigmHost:
    if paradigm not in PARADIGMS:
        raise NotImplementedError(f"paradigm {paradigm.value} is not implemented by this agent")
    return PARADIGMS[paradigm](profile)


def implemented_paradigms() -> list[Paradigm]:
    return list(PARADIGMS)
