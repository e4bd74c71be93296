"""The benchmark scripts' command lines on CPU: one-line refusals before any GPU work (no CUDA, a bad
variant / mode / width, an --out that exists), variant names wired to what they say, atomic JSON,
and the A/B statistics against a hand computation."""

import json
import os
import statistics
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "reports", "kernels"))
import ab_stack  # noqa: E402
import ab_stats  # noqa: E402
import bench_io  # noqa: E402
import bench_mhc  # noqa: E402
import stack_variants  # noqa: E402
import summarize  # noqa: E402


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without CUDA; any CUDA query past the check fails the test."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def boom(*a, **k):
        raise AssertionError("a CUDA call ran before the script refused")

    monkeypatch.setattr(torch.cuda, "get_device_name", boom)


def run_main(monkeypatch, main, argv):
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value


@pytest.mark.parametrize("main, name", [(bench_mhc.main, "bench_mhc.py"), (ab_stack.main, "ab_stack.py")])
def test_cpu_only_machine_gets_one_line(monkeypatch, no_gpu, main, name):
    err = run_main(monkeypatch, main, [name])
    assert isinstance(err.code, str) and "\n" not in err.code and "needs a CUDA GPU" in err.code


@pytest.mark.parametrize("args, says", [
    (["--variants", "residual", "mhc_fused_linkd"], "unknown part 'linkd'"),
    (["--variants", "residual_ovl"], "unknown part 'ovl'"),  # a removed variant: would time the plain residual
    (["--variants", "hc_pkg_cg"], "after hc_pkg the parts are _expout"),  # would time the fused kernels
    (["--variants", "mhc_triton"], "must start with one of residual, mhc_ref"),
    (["--modes", "compiled", "eagr"], "invalid choice: 'eagr'"),  # was timed eagerly under the name "eagr"
    (["--C", "2000"], "--C 2000: must be a positive multiple of 128"),
    (["--tokens", "1000"], "--tokens 1000 must be a positive multiple of --seq 4096"),
    (["--iters", "0"], "--iters 0"),
])
def test_bench_mhc_bad_arguments_are_one_line_errors(monkeypatch, capsys, no_gpu, args, says):
    err = run_main(monkeypatch, bench_mhc.main, ["bench_mhc.py", *args])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.code == 2 and says in last and last.startswith("bench_mhc.py: error:")


def test_existing_out_is_refused_and_kept(monkeypatch, capsys, tmp_path, no_gpu):
    out = tmp_path / "bench.json"
    out.write_text('{"earlier": 1}')
    for main, name in ((bench_mhc.main, "bench_mhc.py"), (ab_stack.main, "ab_stack.py")):
        err = run_main(monkeypatch, main, [name, "--out", str(out)])
        assert err.code == 2 and "already exists" in capsys.readouterr().err
    assert out.read_text() == '{"earlier": 1}'


def test_ab_stack_tags_need_their_own_settings(monkeypatch, capsys, no_gpu):
    stack_variants.VARIANT_SETTINGS.clear()
    try:
        err = run_main(monkeypatch, ab_stack.main, ["ab_stack.py", "--variants", "residual", "mhc_fused_linked_t64"])
        assert err.code == 2 and "unknown part 't64'" in capsys.readouterr().err
        err = run_main(monkeypatch, ab_stack.main, ["ab_stack.py", "--variants", "residual", "mhc_fused_linked_t64",
                                                    "--variant-set", "mhc_fused_linked_t64:PROJ_FWD_MERGED=False"])
        assert "needs a CUDA GPU" in err.code  # accepted: past the checks
        err = run_main(monkeypatch, ab_stack.main, ["ab_stack.py", "--variants", "residual", "residual"])
        assert err.code == 2 and "given twice" in capsys.readouterr().err
    finally:
        stack_variants.VARIANT_SETTINGS.clear()


def test_variant_names_wire_to_what_they_say():
    cpu = torch.device("cpu")
    # every mhc_ref_* uses the reference ops (was: the fused Triton kernels under the reference's name)
    blocks, _ = stack_variants.build("mhc_ref_linked_rcops", 128, 4, 1, False, cpu)
    assert blocks[0].ops.name == "reference" and blocks[0].linked
    assert blocks[0].forward.__kwdefaults__["mode"] == "stream-ops"
    # a --variant-set tag after the parts keeps them (was: the recompute policy / expansion dropped)
    blocks, _ = stack_variants.build("mhc_ref_rcpost_t64", 128, 4, 1, False, cpu)
    assert blocks[0].forward.__kwdefaults__["mode"] == "stream-post"
    assert stack_variants._expand_outside("mhc_ref_expout_t64") == ("mhc_ref_t64", True)
    assert stack_variants._expand_outside("mhc_ref") == ("mhc_ref", False)
    blocks, _ = stack_variants.build("residual", 128, 4, 1, False, cpu)
    assert blocks[0].ops is None and "forward" not in vars(blocks[0])
    from mhc_repro.kernels import fused

    with stack_variants.kernel_switches("mhc_fused_lazy_t64"):
        assert fused.LAZY_RES_DX is True
    assert stack_variants.variant_error("mhc_fused_bf16_linked_fnorm_rcops_cg") is None
    assert stack_variants.variant_error("mhc_fused_linked_t64", tagged=True) is None
    assert stack_variants.variant_error("hc_pkg_t64", tagged=True) is not None


def test_bench_stack_skips_hc_pkg_without_the_package(monkeypatch):
    monkeypatch.setattr(bench_mhc, "_hc_pkg_version", lambda: None)
    for kind in ("hc_pkg", "hc_pkg_expout"):
        r = bench_mhc.bench_stack(kind, True, 128, 4, 1, None, None, None)
        assert r == dict(error="hyper-connections not importable: skipped")


def test_ab_statistics_by_hand():
    """Per-round ratios (not the ratio of medians), their median, the t-interval of their mean."""
    ms = {"base": [10.0, 20.0, 10.0], "b": [12.0, 22.0, 13.0]}  # ratios 1.2, 1.1, 1.3
    s = ab_stats.summarize(ms, "base")["b"]
    assert s["ratio_median"] == pytest.approx(1.2)  # the ratio of the medians would be 13 / 10 = 1.3
    half = 4.303 * 0.1 / 3 ** 0.5  # mean 1.2, sd 0.1, df 2
    assert s["ratio_ci95"] == pytest.approx([1.2 - half, 1.2 + half])
    assert s["ms_median"] == 13.0 and s["ratio_of_min"] == pytest.approx(1.2)
    assert ab_stats.summarize(ms, "base")["base"]["ratio_ci95"] == [1.0, 1.0]
    # 16 rounds (ab_stack's default): df 15, t = 2.131 (was 2.0: a 6 % too narrow interval)
    vals = [1.0 + 0.01 * i for i in range(16)]
    _, lo, hi = ab_stats.interval(vals)
    assert (hi - lo) / 2 == pytest.approx(2.131 * statistics.stdev(vals) / 4)
    assert ab_stats.t95(12) == 2.179 and ab_stats.t95(40) == pytest.approx(2.021, abs=1e-3)
    assert ab_stats.t95(1000) == pytest.approx(1.962, abs=1e-3)


def test_summarize_kernel_table_with_error_rows(tmp_path):
    rec = dict(commit="abc", copy_gb_s=4000.0, stack=[],
               kernels=[dict(C=2048, kernel="pre", ms=0.01, gb_s=3000.0, frac_copy=0.75),
                        dict(C=2048, kernel="post", error="OutOfMemoryError: CUDA out of memory | x")])
    path = tmp_path / "run.json"
    path.write_text(json.dumps(rec))
    lines = summarize.kernel_table(str(path)).splitlines()
    assert lines[2] == "| 2048 | pre | 10.0 | 3000 | 75.0 |"
    assert "OutOfMemoryError" in lines[3] and lines[3].count("|") == 6  # a row, not a KeyError


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "sub" / "r.json"
    bench_io.write_json(str(path), dict(a=1))
    with pytest.raises(TypeError):
        bench_io.write_json(str(path), dict(a=object()))  # fails mid-write
    assert json.loads(path.read_text()) == dict(a=1)  # the earlier complete record survives
