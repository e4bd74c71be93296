"""Micro training setup shared by the training tests: a 2-block d=32 model on a small local corpus,
with data cache and MLflow store in temporary directories (one BPE training per test session)."""
import os
import random
from contextlib import contextmanager

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("the whale ship sea house ball letter king queen throne england truth fortune wife man "
         "neighbourhood family money purse shore world times wisdom foolishness mouth park evil "
         "and of to in a was it is that he she they said would could never little long good").split()


def micro_overrides(tmp, corpus_dir, cache_dir, **extra) -> list[str]:
    """--set overrides for a micro run (2 blocks, d_model 32, vocab 320, seq 32, batch 4)."""
    base = {
        "train.preset": "tiny", "train.variant": "mhc", "train.max_steps": 8, "train.lr": 3e-3,
        "train.warmup_steps": 2, "train.val_every": 2, "train.val_batches": 2, "train.amax_every": 4,
        "train.ckpt_every": 3, "train.progress_bar": False, "train.accelerator": "cpu", "train.devices": 1,
        "train.precision": "32-true", "train.out_dir": str(tmp / "runs"), "train.throughput_window": 2,
        "model.vocab_size": 320, "model.d_model": 32, "model.n_blocks": 2, "model.max_seq_len": 32,
        "model.attention": "{n_heads: 2, head_dim: 16}", "model.dense_ffn_width": 64,
        "data.source": str(corpus_dir), "data.seq_len": 32, "data.batch_size": 4, "data.val_fraction": 0.2,
        "data.cache_dir": str(cache_dir), "tracking.study": "test",
        # one store per session (creating a sqlite store runs MLflow's migrations: seconds each)
        "tracking.tracking_uri": f"sqlite:///{cache_dir / 'mlruns' / 'mlflow.db'}",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(20):
        sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
                 for _ in range(60)]
        (d / f"doc{i:02d}.txt").write_text(" ".join(sents))
    return d


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("datacache")


@contextmanager
def world_of_one(store_dir, backend: str, device_type: str):
    """A process group of one rank in this process (gloo on the CPU, nccl on CUDA) and its 1-D
    "data_parallel" mesh, as FSDP2Strategy builds it. An earlier in-process Lightning run leaves a
    gloo world of one behind: that one is reused (and left alone), any other group skips the test."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    own = not dist.is_initialized()
    if own:
        dist.init_process_group(backend, store=dist.FileStore(str(store_dir / "store"), 1), rank=0, world_size=1)
    elif dist.get_world_size() != 1 or dist.get_backend() != backend:
        pytest.skip(f"a process group other than a {backend} world of one already exists in this process")
    try:
        yield init_device_mesh(device_type, (1,), mesh_dim_names=("data_parallel",))
    finally:
        if own:
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def cuda_mesh(tmp_path_factory):
    """A one-rank NCCL world on CUDA and its mesh (skips without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with world_of_one(tmp_path_factory.mktemp("pg_cuda"), "nccl", "cuda") as mesh:
        yield mesh
