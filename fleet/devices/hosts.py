"""Lab hosts as Ray nodes. A host started with ``--resources '{"slm-fleet-host:hub-a": 1}'`` is
called ``hub-a`` (experiments' ``host:``, ``fleet devices``' host column); any other node is
called by its address. (A custom resource, because Ray 2.60's ``ray start`` has no node labels.)
"""

from __future__ import annotations

HOST_RESOURCE_PREFIX = "slm-fleet-host:"


def host_name(node: dict) -> str:
    """The name of a node as ``ray.nodes()`` lists it."""
    for key in node.get("Resources") or {}:
        if key.startswith(HOST_RESOURCE_PREFIX):
            return key[len(HOST_RESOURCE_PREFIX) :]
    return str(node["NodeManagerAddress"])


def names_of(node: dict) -> tuple[str, ...]:
    """Every name a node answers to: its host name and its address."""
    return (host_name(node), str(node["NodeManagerAddress"]))
