"""benchmarks/gluon_post_res_proj.py on CPU: bad arguments are one-line refusals before any GPU or
Gluon work, and the float64 reference that decides PASS/FAIL on the GPU agrees with the package's
reference ops (stream-major flattening of out, m's column order, Σx² as the coefficients' RMS)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import gluon_post_res_proj as G  # noqa: E402


def run_main(monkeypatch, argv):
    monkeypatch.setattr(sys, "argv", ["gluon_post_res_proj.py", *argv])
    with pytest.raises(SystemExit) as exc:
        G.main()
    return exc.value


@pytest.mark.parametrize("args, says", [
    (["--configs", "48,4,2"], "BC 32 or 64"),
    (["--configs", "64,4,3"], "needs 248 KB of shared memory"),
    (["--configs", "64,4"], "expected BC,WARPS,SX"),
    (["--configs", "64,6,2"], "WARPS 4 or 8"),
    (["--C", "2080"], "multiple of every config's BC"),  # 2080 = 65 x 32: not a multiple of 64
    (["--reps", "10"], "--reps at least 50"),
    (["--tokens", "0"], "--tokens must be positive"),
])
def test_bad_arguments_are_one_line_errors(monkeypatch, capsys, args, says):
    err = run_main(monkeypatch, args)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.code == 2 and says in last and last.startswith("gluon_post_res_proj.py: error:")


def test_existing_out_is_refused_and_kept(monkeypatch, capsys, tmp_path):
    out = tmp_path / "g.json"
    out.write_text('{"earlier": 1}')
    assert run_main(monkeypatch, ["--out", str(out)]).code == 2 and "already exists" in capsys.readouterr().err
    assert out.read_text() == '{"earlier": 1}'


def test_cpu_only_machine_gets_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = run_main(monkeypatch, ["--configs", "32,4,2"]).code
    assert isinstance(err, str) and "\n" not in err
    assert "needs a CUDA GPU" in err or "does not import" in err


def _gluon_36():
    if G.GLUON_ERROR is not None:
        pytest.skip(f"triton.experimental.gluon does not import: {G.GLUON_ERROR}")
    import triton

    if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 6):
        pytest.skip(f"triton {triton.__version__} < 3.6")


@pytest.mark.parametrize("n", [1, 2, 4])
def test_reference_matches_the_reference_ops(n):
    _gluon_36()
    from mhc_repro.residual import mhc_ops

    N, C = 37, 48
    g = torch.Generator().manual_seed(n)
    M = n * n + 2 * n
    x = torch.randn(N, n, C, generator=g).bfloat16()
    f = torch.randn(N, C, generator=g).bfloat16()
    h_post = 2 * torch.sigmoid(torch.randn(N, n, generator=g))
    h_res = torch.softmax(torch.randn(N, n, n, generator=g), -1)
    phi = 0.1 * torch.randn(n * C, M, generator=g)
    out = mhc_ops.mhc_post_res(x, f, h_post, h_res)  # what launch_post_res computes (bf16)
    m, ss = G.reference_m_ss(out, phi)
    assert m.dtype == ss.dtype == torch.float64 and m.shape == (N, M) and ss.shape == (N, )
    # the torch composition, stream by stream: out_flat[t, i*C + c] = out[t, i, c]
    m32 = sum(out[:, i].float() @ phi[i * C:(i + 1) * C] for i in range(n))
    torch.testing.assert_close(m, m32.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ss, out.float().pow(2).sum((1, 2)).double(), rtol=1e-5, atol=0)
    # m's columns and Σx² as the coefficient ops read them: H_pre = σ(m[:, :n] / r) + eps,
    # H_post = 2σ(m[:, n:2n] / r), r = sqrt(Σx² / (nC) + rms_eps), with α = 1 and no bias
    eps = rms_eps = 1e-6
    h_pre, h_post2, _ = mhc_ops.mhc_coefficients(out.reshape(N, n * C), phi, torch.ones(3), torch.zeros(M), n,
                                                 eps=eps, rms_eps=rms_eps)
    r = torch.sqrt(ss / (n * C) + rms_eps)
    torch.testing.assert_close(h_pre.double(), torch.sigmoid(m[:, :n] / r[:, None]) + eps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_post2.double(), 2 * torch.sigmoid(m[:, n:2 * n] / r[:, None]), rtol=1e-5, atol=1e-6)


def test_out_and_rel_error_measures():
    """out_err: a correctly rounded result scores <= 1 even where the sum cancels to ~0; one wrong
    element (a stale or misplaced value) scores far above 1."""
    g = torch.Generator().manual_seed(0)
    N, n, C = 8, 2, 16
    x = torch.randn(N, n, C, generator=g).bfloat16()
    f = torch.randn(N, C, generator=g).bfloat16()
    hp, hr = torch.rand(N, n, generator=g), torch.rand(N, n, n, generator=g)
    hr[0, 0] = torch.tensor([1.0, -1.0])
    x[0, 1] = x[0, 0]
    hp[0, 0] = 0.0  # row (0, 0) cancels exactly: ref 0
    exact = (torch.einsum("tij,tjc->tic", hr.double(), x.double()) + hp.double()[..., None] * f.double()[:, None])
    out = exact.float().bfloat16()
    assert G.out_err(out, x, f, hp, hr) <= 1
    bad = out.clone()
    bad[3, 1, 5] = out[3, 0, 5] + 0.5
    assert G.out_err(bad, x, f, hp, hr) > 10
    assert G.rel_err(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0], dtype=torch.float64)) == pytest.approx(0.5)
