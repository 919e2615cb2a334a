"""slm-fleet: the kernel (this package's top-level modules) and the coordinator side."""

__version__ = "0.1.0"  # the same as pyproject.toml's (tests/test_layout.py checks)
