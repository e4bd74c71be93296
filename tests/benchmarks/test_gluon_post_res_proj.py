"""benchmarks/gluon_post_res_proj.py on CPU: bad arguments are one-line refusals before any GPU or
Gluon work, the config strings (variant, tile) parse as documented, the float64 reference that
decides PASS/FAIL on the GPU agrees with the package's reference ops (stream-major flattening of
out, m's column order, Σx² as the coefficients' RMS), and, with Triton 3.6 importable, every default
config compiles for sm_90 without spills and passes the PTX checks."""

import os
import subprocess
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
    (["--configs", "64,4"], "expected [VARIANT[+OPT...],]BC,WARPS,SX[,BT[,SP]]"),
    (["--configs", "64,6,2"], "WARPS 4 or 8"),
    (["--configs", "fast,64,4,2"], "unknown variant 'fast'"),
    (["--configs", "ws,64,4"], "expected [VARIANT[+OPT...],]BC,WARPS,SX"),
    (["--configs", "ws,64,4,2,64,2,1"], "expected [VARIANT[+OPT...],]BC,WARPS,SX"),
    (["--configs", "ws,32,4,2,96"], "BT 64 or 128"),
    (["--configs", "persist,32,4,2,64,5"], "SP 2 to 4"),
    (["--configs", "base,64,4,2,128"], "base variant has BT 64 and SP 2 only"),
    (["--configs", "persist,32,8,2"], "needs BT >= 16 x WARPS"),  # BT 64: one warpgroup's rows
    (["--configs", "ws,64,4,3"], "needs 248 KB of shared memory"),  # x/f 120 + φ 64 + out 64
    (["--configs", "persist,32,8,3,128,3"], "needs 232 KB of shared memory"),  # 120 + 48 + 64
    (["--C", "2080"], "multiple of every config's BC"),  # 2080 = 65 x 32: not a multiple of 64
    (["--reps", "10"], "--reps at least 50"),
    (["--tokens", "0"], "--tokens must be positive"),
    (["--check-shapes", "some"], "invalid choice"),
    (["--configs", "ws+fast,64,4,2"], "options are distinct names of nomma"),
    (["--configs", "ws+nomma+nomma,64,4,2"], "options are distinct names"),
    (["--configs", "persist+nomma,64,4,2"], "exist for the ws variant only"),
    (["--configs", "fast+nomma,64,4,2"], "unknown variant 'fast'"),
    (["--configs", "ws+copy+nomma,64,4,2"], "+copy (the structure ceiling) takes no other option"),
    (["--configs", "ws+lag,32,4,4"], "+lag frees a φ slot two chunks late: SP >= 3"),
    (["--configs", "ws+copy,64,4,1"], "+copy frees a chunk's slot at the next chunk: SX >= 2"),
    (["--configs", "ws+lag,64,4,2,64,3"], "needs 272 KB of shared memory"),  # x/f 80 + φ 96 + 3 out buffers 96
    (["--set", "fast"], "invalid choice"),
    (["--set", "ablate", "--C", "2080"], "multiple of every config's BC"),
])
def test_bad_arguments_are_one_line_errors(monkeypatch, capsys, args, says):
    err = run_main(monkeypatch, args)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.code == 2 and says in last and last.startswith("gluon_post_res_proj.py: error:")


def test_config_strings(monkeypatch):
    """Three numbers are the base variant (the old format); the default list parses, starts with the
    base kernel's best tile, and fits the shared memory it claims; labels and strings round-trip."""
    ap = G.argparse.ArgumentParser()
    base, ws, ws5, p6 = G.parse_configs(ap, ["64,4,2", "ws,32,4,6", "ws,32,8,3,128", "persist,32,4,4,64,3"])
    assert base == G.Cfg("base", 64, 4, 2, 64, 2) and G.cfg_str(base) == "base,64,4,2"
    assert ws == G.Cfg("ws", 32, 4, 6, 64, 2) and ws5 == G.Cfg("ws", 32, 8, 3, 128, 2)
    assert p6 == G.Cfg("persist", 32, 4, 4, 64, 3) and G.cfg_str(p6) == "persist,32,4,4,64,3"
    assert G.parse_configs(ap, ["base,64,4,2"]) == [base]
    defaults = G.parse_configs(ap, [G.cfg_str(c) for c in G.CONFIGS])
    assert defaults == list(G.CONFIGS) and defaults[0] == base and len(set(defaults)) == len(defaults)
    assert all(G.smem_estimate(c) <= G.SMEM_MAX for c in defaults)
    assert G.smem_estimate(base) == 208 * 1024  # run 115's resources: 208 KB
    assert G.smem_estimate(G.Cfg("persist", 64, 4, 2, 64, 2)) == 208 * 1024  # φ split: no epilogue buffer
    # two blocks per SM fit only ws,32,4,2 of the defaults: it alone gets a .maxnreg (128)
    assert [G.ws_maxnreg(c) for c in defaults if c.variant == "ws"] == [None] * 4 + [128]
    assert G.blocks_per_sm(168, 208 * 1024, 4) == 1 and G.blocks_per_sm(128, 104 * 1024, 8) == 2


def test_ws_options_parse_and_round_trip():
    """+OPT suffixes: any order in, bit order out; ablations are labelled and flagged, candidates not;
    lag's third out buffer is in the shared-memory estimate."""
    ap = G.argparse.ArgumentParser()
    a, b, lag = G.parse_configs(ap, ["ws+noss+nomma,64,4,2", "ws+early,32,4,4,64,3", "ws+lag+early,32,4,4,64,3"])
    assert a == G.Cfg("ws", 64, 4, 2, 64, 2, ("nomma", "noss")) and G.cfg_str(a) == "ws+nomma+noss,64,4,2,64,2"
    assert G.parse_configs(ap, [G.cfg_str(c) for c in (a, b, lag)]) == [a, b, lag]
    assert lag.opts == ("early", "lag") and G.cfg_str(lag) == "ws+early+lag,32,4,4,64,3"
    assert G.is_ablation(a) and not G.is_ablation(b) and not G.is_ablation(lag)
    assert G.cfg_label(a).startswith("[ablation] ws+nomma+noss BC 64") and G.cfg_label(b).startswith("ws+early BC 32")
    assert G.smem_estimate(lag) - G.smem_estimate(b) == 4 * 64 * 32 * 2  # one more out buffer of n tiles
    assert G.Cfg("ws", 64, 4, 2, 64, 2).opts == ()  # the old configs: no options
    assert set(G.OPT_BITS) >= set(G.ABLATIONS) and len(set(G.OPT_BITS.values())) == len(G.OPT_BITS)
    assert all(v & (v - 1) == 0 for v in G.OPT_BITS.values())  # one bit each


def test_ablate_set():
    """--set ablate: run 117's best ws tile first, then every ablation (copy alone), the candidates and
    their reference tile; all distinct, within shared memory, in their string form's round trip."""
    configs, Cs = G.SETS["ablate"]
    ap = G.argparse.ArgumentParser()
    assert G.parse_configs(ap, [G.cfg_str(c) for c in configs]) == list(configs)
    assert configs[0] == G.Cfg("ws", 64, 4, 2, 64, 2) and len(set(configs)) == len(configs)
    assert Cs == [2048, 4096] and all(c % cfg.bc == 0 for c in Cs for cfg in configs)
    assert all(G.smem_estimate(c) <= G.SMEM_MAX for c in configs)
    abl = [c for c in configs if G.is_ablation(c)]
    assert {o for c in abl for o in c.opts} == set(G.ABLATIONS)
    cand = [c for c in configs if c.opts and not G.is_ablation(c)]
    assert {o for c in cand for o in c.opts} == {"early", "lag", "pack", "sepout"}
    assert all(c._replace(opts=()) in configs for c in cand)  # each candidate's plain tile is timed too
    # copy's blocks per SM are its tile's (the .maxnreg from the full tile's shared memory): two for ws 32,4,2
    assert [G.ws_maxnreg(c) for c in configs if "copy" in c.opts] == [None, 128, None, None]


def test_ablations_skip_the_checks(monkeypatch):
    """check(): an ablation is recorded and returned for timing without a launch (its out / m / ss are
    wrong by design); a checked config next to it still runs its checks."""
    from mhc_repro.residual import mhc_ops

    class FakeL:
        @staticmethod
        def launch_post_res(x, f, hp, hr):
            return mhc_ops.mhc_post_res(x, f, hp, hr)

        @staticmethod
        def launch_proj_fwd(v, phi, M, mode):
            m, ss = G.reference_m_ss(v.view(v.shape[0], 1, -1), phi)
            return m.float(), ss.float()

        @staticmethod
        def _phi_parts(phi, x, mode, MP):
            return (phi, )

    launched = []

    def fake_post_res_proj(x, f, hp, hr, phi_buf, M, cfg, programs=None):
        launched.append(cfg)
        out = mhc_ops.mhc_post_res(x, f, hp, hr)
        m, ss = G.reference_m_ss(out, phi_buf)
        return out, m.float(), ss.float()

    real = G.make_inputs
    monkeypatch.setattr(G, "make_inputs", lambda N, n, C: real(N, n, C, device="cpu"))
    monkeypatch.setattr(G, "post_res_proj", fake_post_res_proj)
    monkeypatch.setattr(G, "WATCH", type("W", (), {"step": staticmethod(lambda what: None)})())
    abl, cand = G.Cfg("ws", 32, 4, 2, 64, 2, ("nomma", )), G.Cfg("ws", 32, 4, 2, 64, 2, ("early", ))
    record = dict(checks=[])
    passed = G.check(FakeL, [abl, cand], [(40, 2, 64)], record, lambda: None)
    assert passed == [abl, cand] and abl not in launched and cand in launched
    rec = {r["config"]: r for r in record["checks"]}
    assert rec[G.cfg_str(abl)]["ablation"] is True and rec[G.cfg_str(abl)]["pass"] is None
    assert rec[G.cfg_str(cand)]["pass"] is True


def test_bench_table_with_ablations(monkeypatch, capsys):
    """bench() on the CPU with stand-ins for the launches and the timer: an ablation gets one kernel-only
    row (nostore / noload counted with the bytes they still move), a checked config two, the first
    config a drift row at the end of a long table; every fused row names its config in the JSON."""
    from mhc_repro.residual import mhc_ops

    class FakeL:
        @staticmethod
        def launch_post_res(x, f, hp, hr):
            return mhc_ops.mhc_post_res(x, f, hp, hr)

        @staticmethod
        def launch_proj_fwd(v, phi, M, mode):
            return None

        @staticmethod
        def _phi_parts(phi, x, mode, MP):
            return (phi, )

    real = G.make_inputs
    monkeypatch.setattr(G, "make_inputs", lambda N, n, C: real(N, n, C, device="cpu"))
    monkeypatch.setattr(G, "post_res_proj", lambda *a, **k: None)
    monkeypatch.setattr(G, "time_us", lambda fn, reps: (fn(), 100.0)[1])
    monkeypatch.setattr(G, "WATCH", type("W", (), {"step": staticmethod(lambda what: None)})())
    ws = G.Cfg("ws", 64, 4, 2, 64, 2)
    configs = [ws] + [ws._replace(opts=o) for o in (("nomma", ), ("nostore", ), ("noload", ), ("nostore", "noload"),
                                                     ("copy", ), ("early", ))]
    record = dict(rows=[])
    N, n, C = 64, 4, 128
    G.bench(FakeL, configs, [C], N, 50, record, lambda: None)
    rows = {r["case"]: r for r in record["rows"]}
    unit, small = N * C * 2, N * (n * n + 2 * n + 1) * 4
    fused = (2 * n + 1) * unit + small
    for c in configs:
        assert rows[f"{G.cfg_label(c)} (kernel only)"]["config"] == G.cfg_str(c)
        assert (f"{G.cfg_label(c)} (with phi_split)" in rows) == (not G.is_ablation(c))
    lab = {o: G.cfg_label(ws._replace(opts=o)) + " (kernel only)" for o in (("nomma", ), ("nostore", ), ("noload", ),
                                                                            ("nostore", "noload"))}
    assert rows[lab[("nomma", )]]["bytes"] == fused and rows[lab[("nomma", )]]["ablation"] is True
    assert rows[lab[("nostore", )]]["bytes"] == fused - n * unit
    assert rows[lab[("noload", )]]["bytes"] == fused - (n + 1) * unit
    assert rows[lab[("nostore", "noload")]]["bytes"] == small
    drift = rows[f"{G.cfg_label(ws)} (kernel only, again: drift)"]
    assert drift["config"] == G.cfg_str(ws) and drift["ratio_to_first"] == 1.0 and not drift["ablation"]
    assert list(rows)[-1] == drift["case"] and "/ first" in capsys.readouterr().out


def test_main_prints_help_with_the_config_format(monkeypatch, capsys):
    assert run_main(monkeypatch, ["--help"]).code == 0
    out = capsys.readouterr().out
    assert "VARIANT" in out and "--check-shapes" in out and "--smoke " not in out


def test_existing_out_is_refused_and_kept(monkeypatch, capsys, tmp_path):
    out = tmp_path / "g.json"
    out.write_text('{"earlier": 1}')
    assert run_main(monkeypatch, ["--out", str(out)]).code == 2 and "already exists" in capsys.readouterr().err
    assert out.read_text() == '{"earlier": 1}'


@pytest.mark.parametrize("configs", [["32,4,2"], ["ws,32,4,6", "persist,32,8,2,128"]])
def test_cpu_only_machine_gets_one_line(monkeypatch, configs):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = run_main(monkeypatch, ["--configs", *configs]).code
    assert isinstance(err, str) and "\n" not in err
    assert "needs a CUDA GPU" in err or "does not import" in err


def test_ablate_set_on_a_cpu_only_machine_gets_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = run_main(monkeypatch, ["--set", "ablate"]).code
    assert isinstance(err, str) and "\n" not in err
    assert "needs a CUDA GPU" in err or "does not import" in err


def test_ws_options_reach_the_kernel():
    """fused_launch passes OPTS (the options' bits) to the ws kernel, and nothing for a plain config
    (the specialization runs 117-118 timed)."""
    if G.GLUON_ERROR is not None:
        pytest.skip(f"triton.experimental.gluon does not import: {G.GLUON_ERROR}")
    N, n, C = 128, 4, 256
    M = n * n + 2 * n
    x, f = torch.empty(N, n, C, dtype=torch.bfloat16), torch.empty(N, C, dtype=torch.bfloat16)
    phi_buf = torch.empty(n * C, 2 * G.p2(M), dtype=torch.bfloat16)
    kws = [G.fused_launch(x, f, torch.empty(N, n), torch.empty(N, n, n), phi_buf, M, cfg)[3] for cfg in (
        G.Cfg("ws", 64, 4, 2, 64, 2), G.Cfg("ws", 64, 4, 2, 64, 2, ("nomma", "copy")),
        G.Cfg("ws", 32, 4, 4, 64, 3, ("early", "lag")))]
    assert "OPTS" not in kws[0] and kws[1]["OPTS"] == 1 + 32 and kws[2]["OPTS"] == 64 + 128


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
    x, f, h_post, h_res, phi, M = G.make_inputs(N, n, C, seed=n, phi_std=0.1, device="cpu")
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


def test_out_err_reuses_a_precomputed_reference():
    g = torch.Generator().manual_seed(1)
    N, n, C = 5, 2, 8
    x = torch.randn(N, n, C, generator=g).bfloat16()
    f = torch.randn(N, C, generator=g).bfloat16()
    hp, hr = torch.rand(N, n, generator=g), torch.rand(N, n, n, generator=g)
    out = (torch.einsum("tij,tjc->tic", hr.double(), x.double()) + hp.double()[..., None] * f.double()[:, None]).bfloat16()
    rb = G.out_reference(x, f, hp, hr)
    assert G.out_err(out, x, f, hp, hr, rb) == G.out_err(out, x, f, hp, hr) <= 1


def test_smoke_parent_survives_hangs_and_crashes(monkeypatch):
    """smoke() with scripted children: a child that goes silent is killed and only the config it was
    running is charged; one that dies is charged for the config it was running; one that reports a
    failure and asks for a restart is charged for that config only; the rest run in fresh children."""
    cfgs = [G.Cfg("persist", 64, 4, 2, 64, 2), G.Cfg("ws", 64, 4, 2, 64, 2), G.Cfg("ws", 32, 4, 6, 64, 2),
            G.Cfg("ws", 32, 4, 4, 64, 3), G.Cfg("ws", 32, 8, 3, 128, 2)]
    s = [G.cfg_str(c) for c in cfgs]
    scripts = iter([  # each child's output lines; a trailing None: it then goes silent (a hang)
        [f"SMOKE ok {s[0]}", None],
        ["a warning", "Traceback: boom"],  # dies while running s[2]
        [f"SMOKE fail {s[3]} ValueError: bad", "SMOKE restart"],
        [f"SMOKE ok {s[4]}"],
    ])
    started, procs, queues = [], [], []

    class FakeProc:
        def __init__(self, cmd):
            started.append(cmd[cmd.index("--configs") + 1:])
            lines = next(scripts)
            self.hang = bool(lines) and lines[-1] is None
            self.stdout = [ln + "\n" for ln in lines if ln is not None]
            self.killed = False

        def kill(self):
            self.killed = True

        def wait(self):
            return -9 if self.killed else 1

    class FakeQueue:  # the pump's queue: the child's lines, then None (it ended) or nothing (a hang)
        def __init__(self):
            queues.append(self)
            self.items = []

        def get(self, timeout):
            if not self.items:
                raise G.queue.Empty
            return self.items.pop(0)

    class FakeThread:  # runs the pump's job at start(), without a thread
        def __init__(self, target, daemon):
            pass

        def start(self):
            p = procs[-1]
            queues[-1].items = list(p.stdout) + ([] if p.hang else [None])

    monkeypatch.setattr(G.subprocess, "Popen", lambda cmd, **kw: procs.append(FakeProc(cmd)) or procs[-1])
    monkeypatch.setattr(G.queue, "Queue", FakeQueue)
    monkeypatch.setattr(G.threading, "Thread", FakeThread)
    verdict = G.smoke([G.Cfg("base", 64, 4, 2, 64, 2)] + cfgs, timeout_s=1)
    assert set(verdict) == set(cfgs)  # the base kernel is not smoke-tested
    assert verdict[cfgs[0]] is None and verdict[cfgs[4]] is None
    assert verdict[cfgs[1]].startswith("hang") and procs[0].killed
    assert verdict[cfgs[2]].startswith("smoke process died (rc 1)") and "boom" in verdict[cfgs[2]]
    assert verdict[cfgs[3]] == "ValueError: bad"
    assert started == [s, s[2:], s[3:], s[4:]]


def test_default_configs_compile_for_sm90():
    """Ahead of time, no GPU: every default config compiles for sm_90 under Triton 3.6 (the device's
    version; Gluon's API moves between releases) with no spills, fits an SM's shared memory and passes
    the PTX checks (commit groups per wait; for ws, the loader partitions and named barriers): the
    script's --compile-only exits 0. In a child process: the suite's TRITON_INTERPRET (set without
    CUDA) would turn the kernels into interpreted functions."""
    _gluon_36()
    import triton

    if not triton.__version__.startswith("3.6"):
        pytest.skip(f"triton {triton.__version__}: the kernels target the device's 3.6")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, G.__file__, "--compile-only", "--C", "2048"], env=env,
                          capture_output=True, text=True, timeout=600)
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith(" 2048 ")]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(rows) == len(G.CONFIGS) and not any("NOT OK" in r or "does not compile" in r for r in rows)


def test_smoke_child_command_line(monkeypatch):
    """The real child process, on a machine without a GPU (or without Gluon): it refuses at once, and
    the parent charges each config with that refusal, starting a fresh child for the next one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the child sees no GPU either
    cfgs = G.parse_configs(G.argparse.ArgumentParser(), ["persist,32,8,2,128", "ws,32,4,6"])
    verdict = G.smoke(cfgs, timeout_s=120)
    assert set(verdict) == set(cfgs)
    for why in verdict.values():
        assert why.startswith("smoke process died (rc 1)")
        assert "needs a CUDA GPU" in why or "does not import" in why


@pytest.mark.slow
def test_ablate_set_compiles_for_sm90():
    """The --set ablate configs that the default list lacks (ablations, candidates) compile for sm_90
    under Triton 3.6 without spills and pass the PTX checks (commit groups as each option leaves them,
    the waits each keeps), as test_default_configs_compile_for_sm90 does for the defaults."""
    _gluon_36()
    import triton

    if not triton.__version__.startswith("3.6"):
        pytest.skip(f"triton {triton.__version__}: the kernels target the device's 3.6")
    new = [G.cfg_str(c) for c in G.ABLATE_CONFIGS if c not in G.CONFIGS]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, G.__file__, "--compile-only", "--C", "2048", "--configs", *new], env=env,
                          capture_output=True, text=True, timeout=1200)
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith(" 2048 ")]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(rows) == len(new) and not any("NOT OK" in r or "does not compile" in r for r in rows)
