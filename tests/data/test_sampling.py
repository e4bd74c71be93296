import torch
import pytest

from mhc_repro.data.sampling import ResumableLoader, ResumableSampler


class Ids(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def loader(n=103, bs=4, seed=0, rank=0, world=1):
    return ResumableLoader(Ids(n), ResumableSampler(n, bs, seed, rank, world))


def epoch(dl):
    return [b.tolist() for b in dl]


def test_order_is_seeded_permutation_per_epoch():
    a, b, c = loader(seed=0), loader(seed=0), loader(seed=1)
    e0 = epoch(a)
    assert e0 == epoch(b) and e0 != epoch(c)
    flat = sum(e0, [])
    assert len(flat) == len(set(flat)) == 100 == len(a) * 4   # 103 // 4 * 4, ragged tail dropped
    e1 = epoch(a)                                              # exhausted loader moves to epoch 1
    assert e1 != e0 and len(set(sum(e1, []))) == 100
    a.sampler.set_epoch(0)
    assert epoch(a) == e0                                      # epoch e's order depends only on (seed, e)


def test_ranks_split_the_global_order():
    single = sum(epoch(loader(n=64, bs=8)), [])
    r0 = epoch(loader(n=64, bs=4, rank=0, world=2))
    r1 = epoch(loader(n=64, bs=4, rank=1, world=2))
    merged = sum([x + y for x, y in zip(r0, r1)], [])
    assert merged == single


def test_an_epoch_is_a_whole_number_of_optimizer_steps():
    """With gradient accumulation (step_batch = 3 micro global batches of 4) an epoch of 103 samples is
    cut to 96 = 8 steps, not 100 (25 micro-batches: the last step would average one micro-batch); the
    kept samples are the same prefix of the epoch's order, so a run inside one epoch is unchanged."""
    plain, stepped = ResumableSampler(103, 4, 0), ResumableSampler(103, 4, 0, step_batch=12)
    assert plain.samples_per_epoch == 100 and stepped.samples_per_epoch == 96 and len(stepped) == 96
    assert list(stepped) == list(plain)[:96]
    two = [list(ResumableSampler(103, 2, 0, rank=r, world_size=2, step_batch=12)) for r in (0, 1)]
    assert len(two[0]) == len(two[1]) == 48  # per rank: 8 steps x 3 micro-batches x 2 sequences
    with pytest.raises(ValueError, match="step_batch=10 is not a positive multiple of batch_size x world_size = 4"):
        ResumableSampler(103, 2, 0, world_size=2, step_batch=10)


@pytest.mark.parametrize("stop", [0, 1, 7, 24])
def test_resume_gives_exact_continuation(stop):
    ref = loader()
    full = epoch(ref) + epoch(ref)                      # uninterrupted: epochs 0 and 1
    dl = loader()
    it = iter(dl)
    seen = [next(it).tolist() for _ in range(stop)]
    state = dl.state_dict()
    del it
    resumed = loader()
    resumed.load_state_dict(state)
    rest = epoch(resumed)
    assert seen + rest == full[:25]                      # no repeats, no gaps
    assert epoch(resumed) == full[25:]                   # then the next epoch as usual


def test_state_saved_at_epoch_end_resumes_in_next_epoch():
    dl = loader()
    e0 = epoch(dl)
    resumed = loader()
    resumed.load_state_dict(dl.state_dict())
    assert resumed.sampler.epoch == 1 and epoch(resumed) != e0


def test_mismatched_state_is_rejected():
    state = loader(seed=0).state_dict()
    with pytest.raises(ValueError, match="different data"):
        loader(seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="not a multiple"):
        loader(bs=8).load_state_dict({**state, "consumed": 4})


def test_resume_with_worker_processes():
    ref = epoch(loader(n=64, bs=4))
    dl = ResumableLoader(Ids(64), ResumableSampler(64, 4, 0), num_workers=2)
    it = iter(dl)
    head = [next(it).tolist() for _ in range(5)]   # workers have prefetched further; only 5 were handed out
    state = dl.state_dict()
    del it
    resumed = ResumableLoader(Ids(64), ResumableSampler(64, 4, 0), num_workers=2, persistent_workers=True)
    resumed.load_state_dict(state)
    assert head + epoch(resumed) == ref
