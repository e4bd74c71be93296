"""Launches for Nsight Compute: the Gluon cross-layer forward (benchmarks/gluon_post_res_proj.py, the
base and warp-specialized tiles of run 117) and Triton's post_res_fwd on the same inputs, C = 2048,
16k tokens, n = 4, three rounds (``-k regex:...`` picks the kernel, ``--launch-skip`` the warm-up):

    ncu --launch-skip 3 --launch-count 3 -k regex:"post_res_proj_ws|post_res_proj_gluon|post_res_fwd" \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \\
        --section Occupancy --section ComputeWorkloadAnalysis python3 benchmarks/ncu_gluon_probe.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gluon_post_res_proj as G  # noqa: E402

from mhc_repro.kernels import launch as L  # noqa: E402

N, n, C = 16384, 4, 2048
x, f, hp, hr, phi, M = G.make_inputs(N, n, C)
phi_buf = L._phi_parts(phi, x, "bf16x2", G.p2(M))[0]
configs = [G.Cfg("base", 64, 4, 2, 64, 2), G.Cfg("ws", 64, 4, 2, 64, 2)]
with L.direct_launches():
    for _ in range(3):
        for cfg in configs:
            G.post_res_proj(x, f, hp, hr, phi_buf, M, cfg)
        L.launch_post_res(x, f, hp, hr)
torch.cuda.synchronize()
print("done")
