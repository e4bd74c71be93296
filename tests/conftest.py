"""Suite-wide settings, applied before any test module imports the package.

- No hub access in tests (DATA.md): datasets / huggingface_hub stay offline.
- Without CUDA, Triton kernels can only run under the interpreter, and TRITON_INTERPRET must be set
  before ``mhc_repro.kernels`` decorates them — whichever test directory imports them first.
- Under pytest-xdist each worker gets its share of the cores for torch's and OpenBLAS's thread pools
  (set before torch, and with it numpy, is imported; explicit settings win; subprocesses inherit it).
  ``make test`` runs 2 workers on the 2-core CI machine: with 2 threads in each (torch's and numpy's
  default there) the interpreter's many small numpy products oversubscribe the 2 cores
  (reports/records/ci/README.md, session 28).
"""

import os
from collections import Counter

if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)))
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def triton_cpu() -> None:
    """Skip unless the fused Triton kernels can run on CPU tensors here (Triton installed, interpreter on)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (set above when CUDA is absent)")


# CPU interpreter grids. A test marked ``cpu_cover`` runs its whole parameter grid on CUDA, but on the
# CPU (Triton interpreter: seconds a case) only a covering subset: its CPU cases are taken greedily
# (most values not yet run first, then the least-run values, then collection order) until every value
# of every parameter (``device`` aside) has run at least once;
# ``cover=[("a", "b")]`` adds the pair as one more axis, so that every (a, b) combination runs too. The
# remaining CPU cases skip with CPU_COVER_REASON. MHC_FULL_CPU_GRID=1 runs the full grid on the CPU as well.
CPU_COVER_REASON = "CPU interpreter runs a covering subset; full grid on CUDA"


def _cover_features(item, groups) -> set:
    """(axis, value) pairs of one case. An axis is one parameter, the names of one multi-name
    parametrize ("N,n,C": each tuple is one value) or a ``cover`` group; values by repr (dtypes, dicts)."""
    params = {k: v for k, v in item.callspec.params.items() if k != "device"}
    axes = [tuple(n.strip() for n in m.args[0].split(",")) if isinstance(m.args[0], str) else tuple(m.args[0])
            for m in item.iter_markers("parametrize")]
    axes += [(k,) for k in params if not any(k in a for a in axes)]  # fixture parameters
    # a cover group: the axes it names, together (every combination of their values is a value)
    axes += [tuple(dict.fromkeys(k for a in axes if set(a) & set(g) for k in a)) for g in groups]
    return {(a, tuple(repr(params[k]) for k in a if k in params)) for a in axes if set(a) & params.keys()}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MHC_FULL_CPU_GRID") == "1":
        return
    tests: dict[str, list] = {}
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is not None and spec.params.get("device") == "cpu" and item.get_closest_marker("cpu_cover"):
            tests.setdefault(item.nodeid.split("[")[0], []).append(item)
    skip = pytest.mark.skip(reason=CPU_COVER_REASON)
    for cases in tests.values():
        groups = [tuple(g) for g in cases[0].get_closest_marker("cpu_cover").kwargs.get("cover", ())]
        feats = [_cover_features(c, groups) for c in cases]
        todo, runs, keep = set().union(*feats), Counter(), set()
        while todo:  # the case adding the most values not run yet; on a tie, the one whose values ran least
            best = max(range(len(cases)), key=lambda i: (len(feats[i] & todo), -sum(runs[f] for f in feats[i]), -i))
            keep.add(best)
            todo -= feats[best]
            runs.update(feats[best])
        for i, case in enumerate(cases):
            if i not in keep:
                case.add_marker(skip)
