"""How ``fused`` and ``linked`` register their launchers as ``torch.library`` operators.

``OP_REGISTRATION`` (environment variable ``MHC_KERNEL_OPS``, read at import; logged with a training
run as ``kernels.fused.OP_REGISTRATION``):

- "triton_op": ``torch.library.triton_op``. torch.compile traces the op's body, so Inductor launches
  the kernels from its generated code: at run time no custom-op dispatch and none of the launchers'
  Python per call. The 3B step's GPU time is 1.05x the residual's but its wall time up to 1.2x
  (reports/kernels/RESULTS.md, sessions 19-20): the host falls behind, and the custom ops' dispatch
  and launchers were most of mHC's host time (benchmarks/host_overhead.py). In eager mode a
  triton_op runs its body like a custom op.
- "custom_op": opaque custom ops with hand-written fakes, as up to session 19.

Default ("auto"): triton_op where CUDA is available and the kernels are compiled, else custom_op. The
whole GPU suite passes with it on the H200 (runs 95 + 99); on the 3B step triton_op's process medians
were 0.79x / 1.02x custom_op's (run 97, reports/kernels/RESULTS.md "Session 22"). Run 90's compile
failure (Inductor types a Python float argument fp64) is fixed by the kernels' fp32 casts of their
float scalars. Under TRITON_INTERPRET (CPU) triton_op bodies run in eager mode only: interpreted
kernels cannot run on fake tensors. The projection's backward ops stay custom ops either way
(``traceable=False``): their TMA path checks addresses, and on an fp32 stream their dφ GEMM turns
tf32 on for one call, which a trace would not keep.
"""

from __future__ import annotations

import functools
import os

import torch

from . import launch
from .launch import _check

OP_REGISTRATIONS = ("auto", "triton_op", "custom_op")
REQUESTED = os.environ.get("MHC_KERNEL_OPS") or "auto"
_check(REQUESTED in OP_REGISTRATIONS,
       f"MHC_KERNEL_OPS={REQUESTED!r} is unknown; allowed: {', '.join(OP_REGISTRATIONS)}")


def _auto() -> str:
    """triton_op where Inductor can compile the kernels (CUDA, not interpreted), else custom_op: under
    TRITON_INTERPRET a triton_op cannot be traced (interpreted kernels do not run on fake tensors)."""
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return "triton_op" if torch.cuda.is_available() and not interpreted else "custom_op"


OP_REGISTRATION = _auto() if REQUESTED == "auto" else REQUESTED  # what was registered
_TRACED: set[str] = set()  # the names registered as triton_ops
launch.WRAP_LAUNCHES = OP_REGISTRATION == "triton_op"


def plain_launches(fn):
    """fn with wrap_triton turned off: a custom op's body launches its kernels directly (a wrapped
    launch outside a trace would go through a higher-order op's dispatch; launch.direct_launches)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with launch.direct_launches():
            return fn(*args, **kwargs)
    return run


def op(name: str, *, traceable: bool = True, mutates_args=()):
    """Registers the decorated function as ``mhc_repro::name``: a triton_op where OP_REGISTRATION
    says so and the body is traceable (``traceable``), else a custom op."""
    qualname = f"mhc_repro::{name}"

    def register(fn):
        if traceable and OP_REGISTRATION == "triton_op":
            _TRACED.add(qualname)
            return torch.library.triton_op(qualname, mutates_args=mutates_args)(fn)
        # the schema from fn itself: its string annotations name types of fn's module, not this one's
        schema = torch.library.infer_schema(fn, mutates_args=mutates_args)
        body = plain_launches(fn) if launch.WRAP_LAUNCHES else fn  # launches wrapped only for triton_ops
        return torch.library.custom_op(qualname, body, mutates_args=mutates_args, schema=schema)
    return register


def fake(custom_op):
    """``custom_op.register_fake``; for a triton_op nothing: its body, run on fake tensors, is its fake."""
    if custom_op._qualname in _TRACED:
        return lambda fn: fn
    return custom_op.register_fake
