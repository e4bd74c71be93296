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
