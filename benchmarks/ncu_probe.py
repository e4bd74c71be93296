"""Launches of the linked "add" dx pass, post_res_bwd and the forward projection (``bf16x2``, then
``bf16``) at C = 2048, 16k tokens, n = 4, three rounds, for ncu (``-k regex:...`` picks the kernel)."""
import torch

from mhc_repro.kernels import fused, launch  # noqa: F401  (fused registers the ops)

N, n, c = 16384, 4, 2048
M = n * n + 2 * n
bf = dict(device="cuda", dtype=torch.bfloat16)
x, g, f, d_in = torch.randn(N, n, c, **bf), torch.randn(N, n, c, **bf), torch.randn(N, c, **bf), torch.randn(N, c, **bf)
phi = torch.randn(n * c, M, device="cuda") * 0.01
dm, cc = torch.randn(N, M, device="cuda") * 1e-3, torch.randn(N, device="cuda") * 1e-3
hq, hr = torch.rand(N, n, device="cuda"), torch.rand(N, n, n, device="cuda")
with launch.direct_launches():  # launchers outside the ops (see launch._k)
    for _ in range(3):
        launch.launch_proj_bwd(x.view(N, -1), phi, dm, cc, "bf16", link=(g, hr, hq, d_in), link_mode="add")
        torch.ops.mhc_repro.post_res_bwd(x, f, hq, hr, g)
        for prec in launch.PROJ_PRECISIONS:
            launch.launch_proj_fwd(x.view(N, -1), phi, M, prec)
torch.cuda.synchronize()
