"""kernel_rows: GPU kernels counted, GPU-side user annotations (ranges over kernels) left out."""

from types import SimpleNamespace

from torch.autograd import DeviceType

from mhc_repro.diagnostics.kernel_profile import host_api, kernel_rows


def _event(name, us, device_type=DeviceType.CUDA, annotation=False):
    return SimpleNamespace(name=name, device_type=device_type, is_user_annotation=annotation,
                           time_range=SimpleNamespace(elapsed_us=lambda: us), self_cpu_time_total=us)


def test_user_annotations_are_not_kernels():
    events = [_event("post_res_bwd_mma", 900.0), _event("Optimizer.step#AdamW.step", 2e5, annotation=True),
              _event("aten::add", 5.0, DeviceType.CPU)]
    prof = SimpleNamespace(events=lambda: events)
    assert kernel_rows(prof) == [("post_res_bwd_mma", 900.0)]
    assert kernel_rows(prof, DeviceType.CPU) == [("aten::add", 5.0)]


def test_host_api_groups_launches_syncs_and_copies_per_step():
    cpu = DeviceType.CPU
    events = [_event("cuLaunchKernelEx", 4.0, cpu), _event("cudaLaunchKernel", 6.0, cpu),
              _event("cudaStreamSynchronize", 300.0, cpu), _event("cudaMemcpyAsync", 20.0, cpu),
              _event("aten::add", 5.0, cpu), _event("cuLaunchKernelEx", 900.0)]  # a GPU-side event: not host
    got = host_api(SimpleNamespace(events=lambda: events), steps=2)
    assert got == {"launch": {"calls": 1.0, "us": 5.0}, "sync": {"calls": 0.5, "us": 150.0},
                   "memcpy": {"calls": 0.5, "us": 10.0}}
