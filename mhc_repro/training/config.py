"""Typed training and tracking configuration (the ``train`` and ``tracking`` keys of a run's config.yaml).

The whole run is ``RunConfig``: ``model`` (ModelConfig, resolved from ``train.preset`` +
``train.variant`` + ``train.ablation`` + the YAML's ``model`` overrides), ``train``, ``data``
(mhc_repro.data.DataConfig) and ``tracking``. ``validate()`` raises a one-line ``ValueError`` naming
the bad value and what is allowed, before anything is built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from mhc_repro.config import ModelConfig
from mhc_repro.data.config import DataConfig

VARIANTS = ("residual", "hc", "mhc")
ABLATIONS = {"full": (True, True, True), "res": (True, False, False), "res+pre": (True, True, False)}
PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed")
STRATEGIES = ("auto", "ddp", "fsdp")
FSDP_GRAD_SYNCS = ("micro_step", "step")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _from_dict(cls, d: Any, where: str):
    if isinstance(d, cls):
        return d
    _check(isinstance(d, dict), f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    _check(not unknown, f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    return cls(**d)


def fsdp_recompute_error(model: ModelConfig, bf16: bool) -> str | None:
    """Why FSDP2 cannot run the model's selective recompute (``residual.recompute``), or None (also
    when ``activation_checkpointing`` is on: full checkpointing takes precedence).

    - Units of several blocks (``recompute_blocks``): a unit's first block runs the others' sub-layers
      inside its checkpoint, so their FSDP2 hooks never gather those blocks' parameters.
    - bf16 precision: each HC/mHC residual module is its own fp32 FSDP2 unit
      (``training.fsdp.shard_lm``), so its hooks run inside its block's checkpoint. Their ops differ
      between the forward and the recompute in backward, and SAC replays a checkpoint by op index:
      "stream-ops" / "stream-post" fail (a wrong cached view; on the CPU with torch 2.13 and on the
      H200 with 2.11, reports/training/README.md runs 134-137); "stream" replays them as they ran.
    ``tests/training/test_fsdp_recompute_units.py`` checks that each refused case fails without this."""
    residual, n_blocks = model.residual, model.n_blocks
    if residual.recompute == "none" or model.activation_checkpointing:
        return None
    from mhc_repro.residual.recompute import recompute_unit_size

    size = min(recompute_unit_size(residual.recompute_blocks, residual.num_streams, n_blocks), n_blocks)
    if size > 1:
        return (f"model.residual.recompute_blocks={residual.recompute_blocks!r} ({size} blocks per unit) is not "
                "supported with train.strategy=fsdp (FSDP2 gathers each block's parameters in its own forward); "
                "use 1")
    if bf16 and residual.recompute != "stream":
        return (f"model.residual.recompute={residual.recompute!r} does not run under train.strategy=fsdp with bf16 "
                "precision (FSDP2's hooks of the fp32 residual units inside the checkpoint break its replay); "
                "use recompute=stream, model.activation_checkpointing=true, or train.precision=32-true")
    return None


@dataclass
class TrainConfig:
    preset: str = "tiny"
    """Model preset name (mhc_repro.presets): tiny, tiny-moe, small, 3b, 9b, 27b, 3b-1t."""
    variant: str = "mhc"
    """Residual variant: "residual" (Pre-Norm baseline), "hc" or "mhc"."""
    ablation: str = "full"
    """Table 1 ablation for hc/mhc: "full" (H_res, H_pre, H_post), "res" (H_res only), "res+pre"."""
    seed: int = 0
    """Seed of the model init and of everything random in training (data order has data.seed)."""
    max_steps: int = 100
    """Optimizer steps to train for."""
    global_batch_size: Optional[int] = None
    """Sequences per optimizer step over all devices; reached by gradient accumulation over
    micro-batches of data.batch_size. None = data.batch_size x world size (no accumulation)."""
    lr: float = 1e-3
    """Peak learning rate (Table 5: 8.6e-4 / 5.9e-4 / 4.0e-4 / 9.0e-4)."""
    warmup_steps: int = 10
    """Linear warmup steps from lr/warmup_steps to lr (Table 5: 2000)."""
    lr_milestones: list[float] = field(default_factory=lambda: [0.8, 0.9])
    """Fractions of max_steps where the step schedule drops the LR (paper: 80% and 90%)."""
    lr_factors: list[float] = field(default_factory=lambda: [0.316, 0.1])
    """LR multipliers from each milestone on (paper: x0.316 at 80%, x0.1 at 90%)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas (paper: 0.9, 0.95)."""
    eps: float = 1e-8
    """AdamW epsilon (paper presets: 1e-20)."""
    weight_decay: float = 0.1
    """AdamW weight decay on the model's decayed group (norms, biases, HC/mHC static parts exempt)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 = no clipping (the norm is logged either way).
    [open] The paper does not state clipping; 1.0 is the common DeepSeek/Llama choice."""
    precision: str = "auto"
    """Lightning precision: "auto" = bf16-mixed on GPU, 32-true on CPU; or an explicit value."""
    accelerator: str = "auto"
    """Lightning accelerator: "auto", "cpu", "gpu"."""
    devices: Union[int, str] = "auto"
    """Devices per node ("auto" = all visible GPUs, or 1 CPU process). Env MHC_GPUS_PER_NODE overrides."""
    num_nodes: int = 1
    """Nodes (SLURM or torchrun provide the ranks; no launcher of our own). Env MHC_NUM_NODES overrides."""
    strategy: str = "auto"
    """"auto" (single device), "ddp", or "fsdp" (Lightning ModelParallelStrategy = FSDP2, tensor
    parallel size 1; blocks sharded one by one)."""
    fsdp_grad_sync: str = "micro_step"
    """FSDP2 with gradient accumulation: "micro_step" reduce-scatters the gradients after every
    micro-batch (sharded gradients only: the least memory); "step" only after the last micro-batch of
    each optimizer step (FSDP2's set_requires_gradient_sync(False) before): one reduce-scatter per step
    instead of one per micro-batch, but every rank holds the unsharded fp32 gradients in between
    (4 bytes x parameters: ~12 GB at 3B, ~108 GB at 27B). Same gradients either way (up to the order of
    the fp32 sums). DDP always syncs once per step (Lightning's no_sync); "auto" ignores this."""
    compile: bool = False
    """torch.compile each transformer block in place (block.compile(): state-dict keys unchanged)."""
    val_every: int = 50
    """Validate every this many optimizer steps (and after the last step)."""
    val_batches: int = 4
    """Validation batches per evaluation (fixed held-out batches, same every time)."""
    amax_every: int = 50
    """Amax diagnostics on a fixed validation batch every this many steps (0 = off)."""
    ckpt_every: int = 50
    """Save a checkpoint every this many optimizer steps (also at the end, and on an exception)."""
    log_every: int = 1
    """Log train metrics every this many optimizer steps."""
    throughput_window: int = 5
    """Micro-batches in the rolling window of the tokens/s and MFU estimate."""
    out_dir: str = "runs"
    """Root of run directories: <out_dir>/<experiment>/<run_name>/ (relative to the CWD)."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""
    torch_threads: int = 0
    """torch.set_num_threads on CPU; 0 = torch's default."""

    def validate(self) -> "TrainConfig":
        from mhc_repro.presets import list_presets

        _check(self.preset in list_presets(),
               f"train.preset={self.preset!r} is unknown; allowed: {', '.join(list_presets())}")
        _check(self.variant in VARIANTS, f"train.variant={self.variant!r} is unknown; allowed: {', '.join(VARIANTS)}")
        _check(self.ablation in ABLATIONS,
               f"train.ablation={self.ablation!r} is unknown; allowed: {', '.join(ABLATIONS)}")
        _check(self.variant != "residual" or self.ablation == "full",
               f"train.ablation={self.ablation!r} needs variant hc or mhc; the residual baseline allows only 'full'")
        for name in ("max_steps", "val_every", "val_batches", "ckpt_every", "log_every", "throughput_window"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 1, f"train.{name}={v!r} is invalid; it must be an integer >= 1")
        for name in ("seed", "warmup_steps", "amax_every", "torch_threads"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 0, f"train.{name}={v!r} is invalid; it must be an integer >= 0")
        _check(self.global_batch_size is None or (_is_int(self.global_batch_size) and self.global_batch_size >= 1),
               f"train.global_batch_size={self.global_batch_size!r} is invalid; it must be null or an integer >= 1")
        _check(_finite(self.lr) and self.lr > 0, f"train.lr={self.lr!r} is invalid; it must be a number > 0")
        _check(_finite(self.eps) and self.eps > 0, f"train.eps={self.eps!r} is invalid; it must be a number > 0")
        _check(_finite(self.weight_decay) and self.weight_decay >= 0,
               f"train.weight_decay={self.weight_decay!r} is invalid; it must be a number >= 0")
        _check(_finite(self.grad_clip) and self.grad_clip >= 0,
               f"train.grad_clip={self.grad_clip!r} is invalid; it must be a number >= 0 (0 = off)")
        _check(_is_list(self.betas) and len(self.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in self.betas),
               f"train.betas={self.betas!r} is invalid; it must be two numbers in [0, 1)")
        _check(_is_list(self.lr_factors) and all(_finite(f) and f > 0 for f in self.lr_factors),
               f"train.lr_factors={self.lr_factors!r} is invalid; it must be a list of numbers > 0")
        _check(_is_list(self.lr_milestones) and len(self.lr_milestones) == len(self.lr_factors)
               and all(_finite(m) and 0 < m <= 1 for m in self.lr_milestones)
               and list(self.lr_milestones) == sorted(self.lr_milestones),
               f"train.lr_milestones={self.lr_milestones!r} is invalid; it must be increasing fractions in "
               f"(0, 1], one per lr_factors entry ({self.lr_factors!r})")
        for name in ("compile", "progress_bar"):
            v = getattr(self, name)
            _check(isinstance(v, bool), f"train.{name}={v!r} is invalid; it must be true or false")
        _check(self.precision in PRECISIONS,
               f"train.precision={self.precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
        _check(self.strategy in STRATEGIES,
               f"train.strategy={self.strategy!r} is unknown; allowed: {', '.join(STRATEGIES)}")
        _check(self.fsdp_grad_sync in FSDP_GRAD_SYNCS,
               f"train.fsdp_grad_sync={self.fsdp_grad_sync!r} is unknown; allowed: {', '.join(FSDP_GRAD_SYNCS)}")
        _check(self.accelerator in ("auto", "cpu", "gpu", "cuda"),
               f"train.accelerator={self.accelerator!r} is unknown; allowed: auto, cpu, gpu")
        _check(self.devices == "auto" or (_is_int(self.devices) and self.devices >= 1),
               f"train.devices={self.devices!r} is invalid; it must be 'auto' or an integer >= 1")
        _check(_is_int(self.num_nodes) and self.num_nodes >= 1,
               f"train.num_nodes={self.num_nodes!r} is invalid; it must be an integer >= 1")
        _check(isinstance(self.out_dir, str) and bool(self.out_dir),
               f"train.out_dir={self.out_dir!r} is invalid; give a writable directory (a string; quote it)")
        return self


@dataclass
class TrackingConfig:
    enabled: bool = True
    """Log to MLflow. Off: no MLflow at all (e.g. GPU images without mlflow)."""
    tracking_uri: Optional[str] = None
    """MLflow store; None = $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns/mlflow.db."""
    study: str = "tiny"
    """Study name: the tag ``study`` and the default MLflow experiment (one experiment per study)."""
    experiment: Optional[str] = None
    """MLflow experiment name; None = ``study``."""
    run_name: Optional[str] = None
    """Run name and run-directory name; None = ``<variant>[-<ablation>]-s<seed>``."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra MLflow tags."""

    def validate(self) -> "TrackingConfig":
        _check(isinstance(self.study, str) and bool(self.study) and "/" not in self.study,
               f"tracking.study={self.study!r} is invalid; it must be a non-empty name without '/' (a string; quote it)")
        for name in ("experiment", "run_name"):
            v = getattr(self, name)
            _check(v is None or (isinstance(v, str) and bool(v) and "/" not in v),
                   f"tracking.{name}={v!r} is invalid; it must be null or a non-empty name without '/' "
                   "(a string; quote it)")
        _check(isinstance(self.enabled, bool), f"tracking.enabled={self.enabled!r} is invalid; it must be true or false")
        _check(self.tracking_uri is None or (isinstance(self.tracking_uri, str) and bool(self.tracking_uri)),
               f"tracking.tracking_uri={self.tracking_uri!r} is invalid; it must be null or a URI string")
        _check(isinstance(self.tags, dict), f"tracking.tags={self.tags!r} is invalid; it must be a mapping "
               "of tag names to values, e.g. {team: x}")
        taken = sorted(str(k) for k in self.tags
                       if str(k) in RESERVED_TAGS or str(k).startswith(("mlflow.", "env.")))
        _check(not taken, f"tracking.tags names {taken}, which the runs set themselves and the reports read; "
               f"choose other names (reserved: {sorted(RESERVED_TAGS)}, mlflow.* and env.*)")
        return self


# Tags a training run sets itself (tracking.runinfo.train_tags, the checkpoint callback, train()) and
# the reports and the eval read: user tags may not replace them.
RESERVED_TAGS = frozenset({"run_kind", "variant", "preset", "seed", "ablation", "study", "git_commit", "paper",
                           "run_dir", "checkpoint_path", "data_source", "stop_reason", "train_run_id",
                           "resumed_at_commit"})


@dataclass
class RunConfig:
    model: ModelConfig
    """The resolved model (preset + variant + ablation + overrides)."""
    train: TrainConfig
    """Optimisation, schedule, hardware, checkpointing."""
    data: DataConfig
    """Corpus, tokenizer, sequence length, micro-batch size."""
    tracking: TrackingConfig
    """MLflow study/experiment/run naming."""

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.tracking.study

    @property
    def run_name(self) -> str:
        if self.tracking.run_name:
            return self.tracking.run_name
        t = self.train
        abl = f"-{t.ablation}" if t.variant != "residual" and t.ablation != "full" else ""
        return f"{t.variant}{abl}-s{t.seed}"

    def validate(self) -> "RunConfig":
        self.train.validate()
        self.tracking.validate()
        self.model.validate()
        self.data.validate()
        _check(self.data.seq_len <= self.model.max_seq_len,
               f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}; "
               "lower data.seq_len or raise model.max_seq_len")
        _check(self.data.vocab_size in (None, self.model.vocab_size),
               f"data.vocab_size={self.data.vocab_size} differs from model.vocab_size={self.model.vocab_size}; "
               "leave data.vocab_size null or make them equal")
        if self.train.strategy == "fsdp":
            # units of several blocks; bf16 precision is checked where it is resolved (run.check_run_dir)
            err = fsdp_recompute_error(self.model, bf16=False)
            _check(err is None, err or "")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as written to config.yaml and the checkpoint's hyper_parameters."""
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train),
                "data": self.data.to_dict(), "tracking": dataclasses.asdict(self.tracking)}

    @classmethod
    def from_resolved(cls, d: dict[str, Any]) -> "RunConfig":
        """Inverse of ``to_dict()`` (no preset resolution: ``model`` is taken as is)."""
        return cls(model=ModelConfig.from_dict(d["model"]), train=_from_dict(TrainConfig, d["train"], "train"),
                   data=DataConfig.from_dict(d["data"]), tracking=_from_dict(TrackingConfig, d["tracking"], "tracking"))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
