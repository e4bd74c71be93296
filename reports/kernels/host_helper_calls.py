"""How many _p2 / _cdiv calls one fused sub-layer (linked pair + fused norm, forward + backward) makes:

    TRITON_INTERPRET=1 PYTHONPATH=. python reports/kernels/host_helper_calls.py
"""
import collections
import torch
from mhc_repro.kernels import launch, linked
calls = collections.Counter()
for name in ("_p2", "_cdiv"):
    real = getattr(launch, name)
    setattr(launch, name, lambda *a, _r=real, _n=name: (calls.update([_n]), _r(*a))[1])
n, C, N = 4, 64, 16
x = torch.randn(N, n, C, dtype=torch.bfloat16, requires_grad=True)
phi = (torch.randn(n * C, n * n + 2 * n) * 0.01).requires_grad_()
alpha, bias = torch.rand(3, requires_grad=True), torch.randn(n * n + 2 * n, requires_grad=True)
w = torch.ones(C, dtype=torch.bfloat16, requires_grad=True)
def step():
    b, hp, hr, xl = linked.mhc_pre_linked(x, phi, alpha, bias, n, norm_weight=w)
    linked.mhc_post_res_linked(xl, b, hp, hr).backward(torch.randn(N, n, C, dtype=torch.bfloat16))
step(); calls.clear(); step()
print("calls per sub-layer (forward + backward, linked pair with the fused norm, interpreter paths):", dict(calls), "total", sum(calls.values()))
