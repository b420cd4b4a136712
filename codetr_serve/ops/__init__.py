"""Compiled operators for CPU inference (built ahead of time by `python -m codetr_serve.tools.build_ops`)."""

from codetr_serve.ops.msda import (
    active_path,
    configure_cpu_msda,
    cpu_msda_available,
    load_op,
    msda_forward,
    ops_dir,
)

__all__ = ["active_path", "configure_cpu_msda", "cpu_msda_available", "load_op", "msda_forward", "ops_dir"]
