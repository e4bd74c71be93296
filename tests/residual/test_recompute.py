"""residual.recompute="stream" (PAPER.md §5 recomputation as selective activation checkpointing):
same gradients as "none", fewer activations kept for backward, works under torch.compile, one-line
config errors. The Triton backend runs on CPU through the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 without CUDA), so the shapes are tiny."""

from __future__ import annotations

import functools
import gc
from pathlib import Path

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mhc_repro.model import LM
from mhc_repro.model.moe import MoE
from mhc_repro.presets import get_preset, with_variant
from mhc_repro.residual import ResidualConfig
from mhc_repro.residual.recompute import RECOMPUTE_MODES, checkpoint_block, recompute_policy

BLOCKS, B, T, C, N_STREAMS = 2, 1, 8, 32, 4
STREAM_BYTES = B * T * N_STREAMS * C * 4  # one fp32 stream state [B, T, n, C]
TINY_CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "tiny" / "base.yaml"


def _lm(backend: str, recompute: str, n_blocks: int = BLOCKS, res: dict | None = None, **model) -> LM:
    cfg = with_variant(get_preset("tiny"), "mhc", backend=backend, recompute=recompute, **(res or {}))
    cfg.vocab_size, cfg.d_model, cfg.n_blocks, cfg.dense_ffn_width = 64, C, n_blocks, 64
    cfg.attention.n_heads, cfg.attention.head_dim = 2, 16
    for k, v in model.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return LM(cfg.validate())


class _Produced(TorchDispatchMode):
    """Records a weak reference to the storage of every tensor an op produces (SAC's caching mode and
    checkpoint recomputation included, since this mode sits below them)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[StorageWeakRef, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.refs.append((StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes()))
        return out

    def alive(self, exclude) -> list[int]:
        """nbytes of each distinct storage produced in the forward and still alive, ``exclude`` aside."""
        gc.collect()  # the Triton interpreter leaves reference cycles holding its last launch's args
        skip = {StorageWeakRef(t.untyped_storage()).cdata for t in exclude}
        seen, sizes = set(), []
        for ref, nbytes in self.refs:
            if not ref.expired() and ref.cdata not in seen and ref.cdata not in skip:
                seen.add(ref.cdata)
                sizes.append(nbytes)
        return sizes


def _run(backend: str, recompute: str, **model) -> dict:
    """One forward + backward: the storages kept alive for backward after the forward, and the grads.

    Kept for backward = produced by an op during the forward and still alive once only the loss is
    held: autograd's saved tensors, SAC's cache, the checkpoints' inputs. ``saved_tensors_hooks``
    alone cannot measure it: inside a checkpointed region checkpoint installs its own hooks (an outer
    hook sees only what is saved outside the blocks), and SAC's cache is not a saved tensor at all.
    Without recomputation the two agree (checked in test_fewer_activations_kept)."""
    m = _lm(backend, recompute, **model)
    idx = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(1))
    params = {StorageWeakRef(p.untyped_storage()).cdata for p in m.parameters()}
    hooked: dict[int, int] = {}

    def pack(t):
        ref = StorageWeakRef(t.untyped_storage())
        if ref.cdata not in params:
            hooked[ref.cdata] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _Produced() as produced:
        loss = m(idx).pow(2).mean()
    kept = produced.alive(exclude=[loss, *m.parameters(), *m.buffers()])
    loss.backward()
    grads = {name: p.grad.clone() for name, p in m.named_parameters()}
    return {"kept": kept, "hooked": sum(hooked.values()), "idx_bytes": idx.nbytes, "grads": grads}


@pytest.fixture(scope="module", params=["triton", "reference"])
def runs(request):
    if request.param == "triton":
        request.getfixturevalue("triton_cpu")
    return {mode: _run(request.param, mode) for mode in RECOMPUTE_MODES}


def _assert_same_grads(got: dict, want: dict, rtol: float = 1e-6, atol: float = 1e-7) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("mode", [m for m in RECOMPUTE_MODES if m != "none"])
def test_same_gradients(runs, mode):
    _assert_same_grads(runs[mode]["grads"], runs["none"]["grads"])


def test_fewer_activations_kept(runs):
    none, stream = sum(runs["none"]["kept"]), sum(runs["stream"]["kept"])
    streams = {mode: runs[mode]["kept"].count(STREAM_BYTES) for mode in ("none", "stream")}
    # "none": every sub-layer keeps its input stream (the last sub-layer's output is not needed);
    # "stream": only each block's input stream, kept once by the checkpoint — except the first
    # block's: expand_streams hands it a broadcast view of the embedding, which is what it keeps.
    assert streams == {"none": 2 * BLOCKS, "stream": BLOCKS - 1}, streams
    assert none - stream >= BLOCKS * STREAM_BYTES, (none, stream)  # at least the middle streams
    # the measure is sound: without checkpointing it equals what autograd saves (+ the token ids)
    assert runs["none"]["hooked"] == none + runs["none"]["idx_bytes"]
    print(f"kept for backward: none {none} B, stream {stream} B ({stream / none:.2f}x)")


def test_full_checkpointing_takes_precedence():
    m = _lm("reference", "stream", n_blocks=2, activation_checkpointing=True)
    assert not any(b.recompute_stream for b in m.blocks)
    kept = _run("reference", "stream", n_blocks=2, activation_checkpointing=True)["kept"]
    # the second block's input only (the first one's is the embedding view), nothing inside a block
    assert kept.count(STREAM_BYTES) == 1


def test_inference_paths_unchanged():
    m = _lm("reference", "stream", n_blocks=1).eval()
    idx = torch.randint(0, 64, (B, T))
    with torch.no_grad():
        full = m(idx)
        cache = m.new_cache(B, T)
        inc = torch.cat([m(idx[:, :5], cache=cache), m(idx[:, 5:], cache=cache)], dim=1)
    torch.testing.assert_close(inc, full, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def eager_one_block_grads(triton_cpu):
    """The eager gradients of a one-block Triton LM without recomputation: what each compiled block
    below must give (one interpreter run for all of them)."""
    return _run("triton", "none", n_blocks=1)["grads"]


def _compiled_backward_ops(ref: dict, mode: str, n_blocks: int = 1, **res) -> list[str]:
    """One block compiled in place (as training.compile does: fullgraph, aot_eager) under ``mode``:
    checks its gradients against ``ref`` (eager, no recomputation) and returns its backward graph's ops."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.debugging import aot_eager

    bw_graphs = []

    def backend(gm, example_inputs):
        return aot_eager(gm, example_inputs,
                         bw_compiler=lambda g, _: (bw_graphs.append(g), make_boxed_func(g.forward))[1])

    m = _lm("triton", mode, n_blocks=n_blocks, res=res)
    torch._dynamo.reset()  # cold: the ops are resolved inside the traced code (no graph break allowed)
    for block in m.blocks:
        block.compile(backend=backend, fullgraph=True)
    idx = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(1))
    m(idx).pow(2).mean().backward()
    torch._dynamo.reset()
    for name, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-5, atol=1e-6, msg=name)
    (bw,) = bw_graphs
    return [str(n.target) for n in bw.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("mode", ["stream", "stream-ops", "stream-post"])
def test_compiled_block_recomputes_stream_ops(mode, eager_one_block_grads):
    """Each block compiled in place: the checkpoint and its policy are traced, the backward graph
    re-runs the middle stream's post_res and both pre ops (only the post_res under "stream-post"), and
    the gradients match eager without recomputation."""
    targets = _compiled_backward_ops(eager_one_block_grads, mode)
    # the middle stream's post op, re-run (post_res_linked with the default sublayer_ops="linked")
    assert targets.count("mhc_repro.post_res.default") + targets.count("mhc_repro.post_res_linked.default") == 1
    # both pre ops (pre_norm: with the branch's RMSNorm fused in, residual.fuse_branch_norm's default)
    pre_reruns = 0 if mode == "stream-post" else 2
    assert targets.count("mhc_repro.pre.default") + targets.count("mhc_repro.pre_norm.default") == pre_reruns
    assert targets.count("mhc_repro.coefficients.default") == 0  # saved, not re-run


def test_compiled_block_with_the_projection_handoff(eager_one_block_grads):
    """residual.proj_handoff in a compiled block under "stream-post": the gradients are eager's without
    the handoff, and the backward re-runs the middle stream's post op, which is now the one that forms
    the FFN sub-layer's projection."""
    targets = _compiled_backward_ops(eager_one_block_grads, "stream-post", proj_handoff=True)
    assert targets.count("mhc_repro.post_res_proj_linked.default") == 1
    assert targets.count("mhc_repro.post_res_linked.default") == 0


def test_compiled_first_block_saves_no_copy_of_its_input(triton_cpu):
    """stream-ops, compiled (aot_eager): the first block's input is expand_streams' broadcast view and
    the n-stream copy its ops make of it is re-run in backward, not among the forward graph's saved
    tensors (which held one [B·T, n, C] copy before the policy re-ran copies of broadcasts)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.debugging import aot_eager

    fw_graphs = []

    def capture_fw(gm, example_inputs):
        fw_graphs.append(gm)
        return make_boxed_func(gm.forward)

    m = _lm("triton", "stream-ops", n_blocks=2)
    idx = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(1))
    m(idx)  # eager first: resolves the ops outside the traced code
    torch._dynamo.reset()
    m.blocks[0].compile(backend=lambda gm, ex: aot_eager(gm, ex, fw_compiler=capture_fw), fullgraph=True)
    m(idx).pow(2).mean().backward()
    torch._dynamo.reset()
    (fw,) = fw_graphs
    (outs,) = [node.args[0] for node in fw.graph.nodes if node.op == "output"]
    shapes = [tuple(o.meta["val"].shape) for o in outs if "val" in getattr(o, "meta", {})]
    assert shapes.count((B * T, N_STREAMS, C)) == 0, shapes


def test_checkpoint_block_is_usable_alone():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(3, 8, requires_grad=True)
    y = checkpoint_block(lambda t: torch.tanh(lin(t)) * 2, x)
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (torch.tanh(lin(x2)) * 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_policy_saves_matmuls_and_coefficients_only():
    from torch.utils.checkpoint import CheckpointPolicy as P

    a = torch.randn(4, 3, 32)
    assert recompute_policy(None, torch.ops.aten.mm.default) == P.MUST_SAVE
    assert recompute_policy(None, torch.ops.aten.add.Tensor) == P.PREFER_RECOMPUTE
    assert recompute_policy(None, torch.ops.aten.view.default) == P.PREFER_RECOMPUTE
    assert recompute_policy(None, torch.ops.aten.bmm.default, a, a.transpose(1, 2)) == P.MUST_SAVE
    mix = torch.randn(4, 3, 4)  # contraction over n = 4 streams: the reference mHC einsum
    assert recompute_policy(None, torch.ops.aten.bmm.default, mix, torch.randn(4, 4, 32)) == P.PREFER_RECOMPUTE


def test_stream_ops_policy_recomputes_copies_of_broadcasts():
    """The first block's input is expand_streams' broadcast view; its copy into n streams is re-run."""
    from torch.utils.checkpoint import CheckpointPolicy as P

    from mhc_repro.residual import expand_streams
    from mhc_repro.residual.recompute import stream_ops_policy

    view = expand_streams(torch.randn(2, 3, 8), 4)
    aten = torch.ops.aten
    assert stream_ops_policy(None, aten.clone.default, view) == P.MUST_RECOMPUTE
    assert stream_ops_policy(None, aten.clone.default, view.contiguous()) == P.PREFER_SAVE
    assert stream_ops_policy(None, aten.clone.default, torch.randn(1, 8).expand(1, 8)) == P.PREFER_SAVE
    assert stream_ops_policy(None, aten.mm.default, torch.randn(2, 2), torch.randn(2, 2)) == P.MUST_SAVE


def test_bad_value_one_line_error():
    with pytest.raises(ValueError) as err:
        ResidualConfig(recompute="blocks").validate()
    msg = str(err.value)
    assert "residual.recompute='blocks'" in msg and "none, stream" in msg and "\n" not in msg


# ---- residual.recompute_blocks: recompute units of several blocks (PAPER.md §5's L_r) ---------------

@pytest.mark.parametrize("n_streams, n_blocks, expected", [
    (4, 12, 2),  # 3B and 1T-3B presets: L = 24 sub-layers, sqrt(4·24/6) = 4 sub-layers
    (4, 18, 2),  # 9B: sqrt(24) = 4.90 sub-layers = 2.45 blocks
    (4, 30, 3),  # 27B: sqrt(40) = 6.32 sub-layers
    (4, 4, 1),   # tiny: sqrt(5.33) = 2.31 sub-layers
    (4, 64, 5),  # sqrt(85.3) = 9.24 sub-layers = 4.62 blocks
    (1, 12, 1),  # the residual baseline: sqrt(24 / 3) = 2.83 sub-layers
    (4, 1, 1),
])
def test_paper_recompute_blocks(n_streams, n_blocks, expected):
    from mhc_repro.residual.recompute import paper_recompute_blocks

    assert paper_recompute_blocks(n_streams, n_blocks) == expected


def test_recompute_units_cover_every_block_once():
    from mhc_repro.residual.recompute import recompute_units

    assert [list(u) for u in recompute_units(3, 4, 8)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [list(u) for u in recompute_units(1, 4, 2)] == [[0], [1]]
    assert [list(u) for u in recompute_units("auto", 4, 30)] == [[i, i + 1, i + 2] for i in range(0, 30, 3)]
    assert [list(u) for u in recompute_units(9, 4, 3)] == [[0, 1, 2]]  # longer than the model: one unit


@pytest.fixture(scope="module")
def unit_runs():
    """Three blocks, "stream", reference ops: no recomputation, one-block units, and units of 2
    (blocks 0-1, 2) and 3. (The Triton ops in a unit: test_compiled_unit_recomputes_its_inner_streams.)"""
    run = functools.partial(_run, "reference", n_blocks=3)
    return {"none": run("none"), **{k: run("stream", res={"recompute_blocks": k}) for k in (1, 2, 3)}}


@pytest.mark.parametrize("blocks", [2, 3])
def test_units_give_the_same_gradients(unit_runs, blocks):
    _assert_same_grads(unit_runs[blocks]["grads"], unit_runs["none"]["grads"])


def test_units_keep_one_stream_each(unit_runs):
    """Each unit keeps its input stream once (the first unit's is the embedding view): three one-block
    units keep two streams, units (0-1, 2) one, a single unit of three none; the rest is unchanged."""
    kept = {k: unit_runs[k]["kept"] for k in (1, 2, 3)}
    assert {k: v.count(STREAM_BYTES) for k, v in kept.items()} == {1: 2, 2: 1, 3: 0}
    assert sum(kept[1]) - sum(kept[2]) == STREAM_BYTES
    assert sum(kept[1]) - sum(kept[3]) == 2 * STREAM_BYTES


def test_compiled_unit_recomputes_its_inner_streams(triton_cpu):
    """A unit of two blocks compiled through its first block (fullgraph, as training.compile does it)
    under "stream-post": the backward re-runs both middle streams' post ops and the one between the
    blocks (one per block-unit before), and the gradients are eager's without recomputation."""
    ref = _run("triton", "none", n_blocks=2)["grads"]
    targets = _compiled_backward_ops(ref, "stream-post", n_blocks=2, recompute_blocks=2)
    assert targets.count("mhc_repro.post_res_linked.default") == 3
    assert targets.count("mhc_repro.coefficients.default") == 0


def test_units_leave_inference_alone():
    m = _lm("reference", "stream", n_blocks=3, res={"recompute_blocks": 2}).eval()
    ref = _lm("reference", "none", n_blocks=3).eval()
    idx = torch.randint(0, 64, (B, T))
    with torch.no_grad():
        torch.testing.assert_close(m(idx), ref(idx), rtol=0, atol=0)
        cache = m.new_cache(B, T)
        inc = torch.cat([m(idx[:, :5], cache=cache), m(idx[:, 5:], cache=cache)], dim=1)
    torch.testing.assert_close(inc, ref(idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -1, "two", True, 1.5])
def test_bad_recompute_blocks_one_line_error(bad):
    with pytest.raises(ValueError) as err:
        ResidualConfig(recompute_blocks=bad).validate()
    msg = str(err.value)
    assert f"residual.recompute_blocks={bad!r}" in msg and "'auto'" in msg and "\n" not in msg


def test_units_refused_under_fsdp():
    from mhc_repro.training.compose import build_config

    sets = ["train.variant=mhc", "train.strategy=fsdp", "model.residual.recompute=stream-ops"]
    build_config([TINY_CONFIG], sets + ["model.residual.recompute_blocks=1"], env={})
    with pytest.raises(ValueError) as err:
        build_config([TINY_CONFIG], sets + ["model.residual.recompute_blocks=2"], env={})
    msg = str(err.value)
    assert "recompute_blocks=2" in msg and "train.strategy=fsdp" in msg and "\n" not in msg


# ---- MoE blocks (the paper presets' FFN) under selective recompute ------------------------------------

def _moe_step(recompute: str, compiled: bool) -> tuple[dict, list]:
    """tiny-moe LM, reference ops, one forward + backward: the gradients and each MoE's load counts.
    Compiled, a second step must reuse the graphs: the LM allocates the counts before its blocks run,
    so a block always adds (a branch on "nothing counted yet", or a growing list of counts, made
    Dynamo trace it again every step)."""
    from torch._dynamo.utils import counters

    cfg = with_variant(get_preset("tiny-moe"), "mhc", backend="reference", recompute=recompute)
    cfg.n_blocks = 2  # a dense block, then an MoE one
    torch.manual_seed(0)
    m = LM(cfg.validate())
    idx = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    if compiled:
        with torch.no_grad():
            m(idx)  # resolves the ops outside the traced code
        torch._dynamo.reset()
        for block in m.blocks:
            block.compile(backend="eager", fullgraph=True)  # a graph break would fail here
    moes = [moe for moe in m.modules() if isinstance(moe, MoE)]
    for moe in moes:
        moe._load = None
    with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):
        m(idx).pow(2).mean().backward()
        if compiled:
            graphs = counters["stats"]["unique_graphs"]
            m.zero_grad()
            m(idx).pow(2).mean().backward()  # the counts go on from the first step's
            assert counters["stats"]["unique_graphs"] == graphs > 0
    torch._dynamo.reset()
    loads = [moe.load for moe in moes]
    return {k: p.grad for k, p in m.named_parameters() if p.grad is not None}, loads


@pytest.fixture(scope="module")
def moe_none():
    return _moe_step("none", compiled=False)


@pytest.mark.parametrize("mode, compiled", [("stream", False), ("stream-ops", False), ("stream-post", False),
                                            ("stream-ops", True)])
def test_moe_blocks_recompute(moe_none, mode, compiled):
    """The MoE's forward makes its expert counts and keeps them (a side effect): eager SAC caches op
    outputs and refused the in-place count ("cached ... has been mutated"), a count that branched on
    what was kept before broke SAC's replay, and Dynamo traces the checkpoint only when told not to
    replay the side effect (the training module sets it). Same gradients as without recomputation;
    the counts are added once per step (compiled: two steps), but twice under eager "stream", whose
    policy re-runs the add."""
    (g0, load0), (g, load) = moe_none, _moe_step(mode, compiled)
    _assert_same_grads(g, g0, rtol=1e-5, atol=1e-6)
    assert len(load) == len(load0) > 0
    for a, b in zip(load, load0):
        torch.testing.assert_close(a, b * (2 if compiled or mode == "stream" else 1))
