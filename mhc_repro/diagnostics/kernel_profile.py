"""Where a step's GPU time goes: the kernels ``torch.profiler`` saw, summed per step and grouped by
category — the fused mHC kernels (by name), Inductor's generated kernels, GEMMs, attention, memory
ops and the rest. Used by ``benchmarks/profile_stack.py`` (the benchmark's block stacks) and by
``mhc_repro.training.bench --profile-steps`` (the real training loop)."""

from __future__ import annotations

import collections
import importlib

from torch.autograd import DeviceType

# The kernel modules of mhc_repro/kernels: Triton names a GPU kernel after its @triton.jit function
# (gluon_xl: the Gluon cross-layer kernels, @gluon.jit, a JITFunction too).
KERNEL_MODULES = ("coef_kernels", "dx_kernels", "norm_kernels", "stream_kernels", "gluon_xl")
CATEGORIES = ("mhc", "inductor", "gemm", "attention", "memory", "other")


def mhc_kernel_names() -> tuple[str, ...]:
    """Every public @triton.jit function of the kernel modules (read from the modules, so a kernel
    added later is counted as mHC's, not as "other": the fused norm's and the TMA dx pass's were
    missed by a hand-kept list until session 14)."""
    from triton.runtime.jit import KernelInterface  # JITFunction, or InterpretedFunction under TRITON_INTERPRET

    names = []
    for mod in KERNEL_MODULES:
        m = importlib.import_module(f"mhc_repro.kernels.{mod}")
        names += [k for k, v in vars(m).items() if isinstance(v, KernelInterface) and not k.startswith("_")]
    return tuple(sorted(set(names)))


MHC_KERNELS = mhc_kernel_names()


def category(name: str) -> str:
    """The category of a GPU kernel, from its name."""
    low = name.lower()
    if low.startswith(MHC_KERNELS):
        return "mhc"
    if low.startswith("triton_"):
        return "inductor"
    if any(s in low for s in ("flash", "fmha", "attention", "attn")):
        return "attention"
    if any(s in low for s in ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_")):
        return "gemm"
    if "memcpy" in low or "memset" in low:
        return "memory"
    return "other"


def kernel_table(rows, steps: int) -> dict:
    """{name: {category, calls, us}} per step from (kernel name, µs) rows of ``steps`` steps."""
    calls, us = collections.Counter(), collections.Counter()
    for name, t in rows:
        calls[name] += 1
        us[name] += t
    return {k: dict(category=category(k), calls=calls[k] / steps, us=us[k] / steps) for k in us}


def by_category(table: dict) -> dict:
    out = dict.fromkeys(CATEGORIES, 0.0)
    for row in table.values():
        out[row["category"]] += row["us"]
    return out


def kernel_rows(prof, device_type=DeviceType.CUDA) -> list[tuple[str, float]]:
    """(name, µs) of every event of ``device_type`` the profiler saw: GPU kernels and memory ops on
    CUDA; on CPU (tests) the operators' self times. GPU-side user annotations (record_function ranges
    such as Lightning's ``Optimizer.step#AdamW.step``) span kernels counted already: left out (up to
    run 69 one such range added 208 ms to the 3B step's kernel sum)."""
    if device_type == DeviceType.CPU:
        return [(e.name, e.self_cpu_time_total) for e in prof.events() if e.device_type == DeviceType.CPU]
    return [(e.name, e.time_range.elapsed_us()) for e in prof.events()
            if e.device_type == device_type and not getattr(e, "is_user_annotation", False)]


# CUDA runtime / driver calls, which CUPTI records as host-side events: launches queue work, the
# synchronising calls wait for it. GPU idle time with little host time in the waits means the host
# (Python, launch overhead) set the pace, not the GPU: the question for mHC's bf16-stream slow mode.
HOST_API = {"launch": ("cudaLaunch", "cuLaunch", "cudaGraphLaunch"),
            "sync": ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize"),
            "memcpy": ("cudaMemcpy", "cuMemcpy")}


def host_api(prof, steps: int) -> dict:
    """Per step, for each HOST_API group: calls and host µs. All zero without CUDA."""
    out = {g: {"calls": 0.0, "us": 0.0} for g in HOST_API}
    for e in prof.events():
        if e.device_type != DeviceType.CPU:
            continue
        for group, prefixes in HOST_API.items():
            if e.name.startswith(prefixes):
                out[group]["calls"] += 1 / steps
                out[group]["us"] += e.time_range.elapsed_us() / steps
                break
    return out


def summarize(prof, steps: int, wall_us: float, cuda: bool, top: int = 30, full: bool = False) -> dict:
    """Per step: µs by category, all kernels' sum, idle (wall − kernels), the ``top`` kernels and the
    host's CUDA API time (``host_api``); with ``full`` also the whole kernel table as ``kernels``."""
    table = kernel_table(kernel_rows(prof, DeviceType.CUDA if cuda else DeviceType.CPU), steps)
    kernel_us = sum(r["us"] for r in table.values())
    tops = sorted(table.items(), key=lambda kv: -kv[1]["us"])[:top]
    out = dict(steps=steps, wall_us=wall_us, kernel_us=kernel_us, idle_us=wall_us - kernel_us,
               categories=by_category(table), top=[dict(name=k, **v) for k, v in tops],
               host_api=host_api(prof, steps))
    return {**out, "kernels": table} if full else out
