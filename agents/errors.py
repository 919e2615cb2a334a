"""Errors the phone side raises across its parts (the agent's server maps them to gRPC codes)."""

from __future__ import annotations


class DeployError(Exception):
    """Loading the deployment failed (bad model path, a process that died while loading)."""
