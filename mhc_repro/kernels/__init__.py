"""mHC operator dispatch: fused Triton kernels on CUDA, the pure-PyTorch reference elsewhere.

``get_mhc_ops(backend, device)`` returns an object with ``mhc_coefficients``, ``mhc_pre`` and
``mhc_post_res`` having exactly the signatures of ``mhc_repro.residual.mhc_ops``, and the linked pair
(``mhc_pre_linked`` / ``mhc_post_res_linked``) with the cross-layer post op ``mhc_post_res_proj_linked``
(kernels/cross_layer.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

BACKENDS = ("auto", "reference", "triton")


def _reference_ops() -> SimpleNamespace:
    from mhc_repro.residual import mhc_ops

    return SimpleNamespace(
        name="reference",
        mhc_coefficients=mhc_ops.mhc_coefficients,
        mhc_pre=mhc_ops.mhc_pre,
        mhc_post_res=mhc_ops.mhc_post_res,
        mhc_pre_linked=mhc_ops.mhc_pre_linked,
        mhc_post_res_linked=mhc_ops.mhc_post_res_linked,
        mhc_post_res_proj_linked=mhc_ops.mhc_post_res_proj_linked,
    )


def _triton_ops(precision: str | None, device: torch.device | str | None = None) -> SimpleNamespace:
    from mhc_repro.kernels import fused, launch  # imports triton; fails cleanly without it

    dev = None if device is None else torch.device(device)
    if dev is not None and dev.type != "cuda" and not launch._interpreted():
        # else the first launch fails deep inside Triton ("0 active drivers ([]). There should only be one.")
        raise ValueError(f"mHC backend 'triton' cannot run on device {dev.type!r}: the fused kernels need CUDA, "
                         "or TRITON_INTERPRET=1 set before mhc_repro.kernels is imported (the CPU interpreter, "
                         "for tests); use backend 'auto' or 'reference'")
    return fused.ops(precision)


def launch_settings() -> dict[str, object]:
    """The fused kernels' module switches (``launch``'s tiles, projection precision and dx-pass
    options; ``linked.LINK_MODE`` / ``ADD_IN_PLACE``; ``fused.LAZY_RES_DX``; how the ops are registered,
    ``registration.OP_REGISTRATION``, and ``MHC_KERNEL_OPS`` as asked: "auto" or forced), logged with a training
    run as ``kernels.*`` params: they decide the kernels' summation orders, so a run records which
    were in force. {} when Triton is not importable."""
    try:
        from mhc_repro.kernels import cross_layer, fused, launch, linked, registration
    except ImportError:
        return {}
    out = {k: v for k, v in vars(launch).items() if k.lstrip("_").isupper() and not callable(v)}
    out.update({"linked.LINK_MODE": linked.LINK_MODE, "linked.ADD_IN_PLACE": linked.ADD_IN_PLACE,
                "cross_layer.USE_GLUON": cross_layer.USE_GLUON, "cross_layer.GLUON_TILE": cross_layer.GLUON_TILE,
                "fused.LAZY_RES_DX": fused.LAZY_RES_DX, "fused.OP_REGISTRATION": registration.OP_REGISTRATION,
                "fused.OP_REGISTRATION_REQUESTED": registration.REQUESTED})
    return out


def get_mhc_ops(backend: str = "auto", device: torch.device | str | None = None,
                precision: str | None = None) -> SimpleNamespace:
    """``precision``: projection operands of the fused kernels on a bf16 stream ("bf16x2" | "bf16";
    None = the kernels' default); the reference ops are exact fp32 and ignore it."""
    if backend not in BACKENDS:
        raise ValueError(f"mHC backend {backend!r} is unknown; allowed: {', '.join(BACKENDS)}")
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if backend == "reference" or (backend == "auto" and not on_cuda):
        return _reference_ops()
    if backend == "auto":
        try:
            return _triton_ops(precision, device)
        except ImportError:
            return _reference_ops()
    return _triton_ops(precision, device)
