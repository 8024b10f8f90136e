"""One training loop for every strategy, with checkpoints that survive structural switches.

The loop: LR from the strategy (a pure function of the step) → batch (a pure function
of seed and step) → forward under bf16 autocast on GPUs → loss → AdamW step → the
strategy's decoupled Frobenius decay of low-rank factors → ``strategy.after_step``;
when the strategy replaced parameters the optimizer is rebuilt, keeping the state of
every surviving parameter.

A checkpoint holds the config, the strategy's state (which encodes the structure),
the weights, the optimizer state and the torch RNG states; :meth:`Trainer.from_checkpoint`
rebuilds the task and the dense model from the config, lets the strategy re-create the
saved structure, and continues bit-exactly on the same device.

Under ``torchrun --nproc_per_node N`` (env ``WORLD_SIZE`` > 1) the trainer initialises the
process group itself (nccl on CUDA, gloo otherwise), trains a
``DistributedDataParallel`` wrapper of the model (process ``r`` of ``N`` takes the batch
of index ``step·N + r``, so the global batch is N times the per-process one), lets rank 0
make every structural decision (see :mod:`lowrank_kernels.distributed`), copies rank 0's
weights to all processes and re-wraps the model after each structural change, and writes
checkpoints on rank 0 only. A checkpoint holds the unwrapped model and resumes on any
world size (with a different world size the batch stream differs, so not bit-exactly).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import distributed as dist_utils
from ..ops import dispatch_decisions, get_backend, resolve_backend
from .checkpoint import atomic_torch_save, state_digest, verify_digest
from .context import FilterFn, ProcessGroupDecisions, carry_optimizer_state
from .data import Task, make_task
from .strategies import Strategy, make_strategy

CHECKPOINT_VERSION = 3  # 3: a SHA-256 digest of the whole checkpoint is stored and verified

REPORT_KEYS = (
    "method",
    "model",
    "device",
    "backend",
    "switch_step",
    "ranks",
    "params_before",
    "params_after",
    "train_time_s",
    "tokens_per_s",
    "final_train_loss",
    "final_val_loss",
    "rank_history",
)


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in checkpoints and reports).

    Attributes:
        model: task/model name, ``"gpt"`` (char GPT on pydoc text) or ``"cnn"`` (digits).
        method: ``"full"``, ``"fixed"``, ``"cuttlefish"``, ``"relora"`` or ``"inrank"``.
        steps: optimizer steps; or give ``epochs`` (steps = epochs · steps_per_epoch).
        batch_size: per-step batch (None: the task's default).
        lr: peak learning rate of AdamW.
        weight_decay: decoupled decay of dense matrices; Frobenius decay λ of factors.
        betas: AdamW betas.
        warmup_steps: linear LR warm-up (also the default re-warm-up after a switch).
        min_lr_ratio: final LR of the cosine decay, relative to ``lr``.
        grad_clip: max global grad norm (None: no clipping).
        eval_every: steps between validation passes (None: five per run).
        seed: seeds the init, the data order and every random draw of the strategies.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...
        amp: bf16 autocast (None: on for CUDA, off elsewhere).
        dist_timeout_s: under ``torchrun``, seconds a collective may wait for a peer
            before the run fails (a stuck or stopped process is detected within minutes
            instead of hanging; rank 0 may profile layers while the others wait).
        task_kwargs: extra task arguments (``block_size``, ``eval_batches``, ``model_kwargs``).
        strategy_kwargs: the strategy's constructor arguments.
    """

    model: str = "gpt"
    method: str = "full"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    lr: float = 3e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    eval_every: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None
    dist_timeout_s: float = 300.0
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON/checkpoint-friendly dict of every field."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["betas"] = tuple(data.get("betas", (0.9, 0.95)))
        return cls(**data)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto' or a torch device string, got {name!r}") from exc


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (only ``requires_grad`` ones if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def is_main_process() -> bool:
    """True unless running as a non-zero rank under ``torchrun`` (env ``RANK``)."""
    return dist_utils.is_main_process()


class Trainer(ProcessGroupDecisions):
    """Trains ``config.model`` with ``config.method``; see the module docstring.

    The trainer is its strategy's :class:`~lowrank_kernels.train.context.StrategyContext`:
    the hooks receive the trainer itself, and read only the protocol's members
    (``model``, ``optimizer``, ``step``, ``total_steps``, ``steps_per_epoch``,
    ``warmup_steps``, ``min_lr_ratio``, ``filter_fn``, ``example_input()``, the
    distributed decisions, ``rebuild_optimizer()`` and ``log_info()``).

    Args:
        config: the run.
        progress: show a tqdm bar (loss, tokens/s, current ranks).
        log: where one-line messages go (None: silent).

    Attributes:
        model, task, strategy, optimizer, device, total_steps.
        step: completed optimizer steps.
        losses: training loss of every completed step (float, before regularization).
        evals: ``[{"step", "val_loss", ...}]`` from the periodic evaluations.
    """

    def __init__(self, config: TrainConfig, *, progress: bool = True, log=print) -> None:
        self.config = config
        self.progress = progress
        self.log = log
        if not (isinstance(config.dist_timeout_s, int | float) and config.dist_timeout_s > 0):
            raise ValueError(
                f"TrainConfig: dist_timeout_s must be a number > 0, got {config.dist_timeout_s!r}"
            )
        # Under torchrun: join the process group, one device per process.
        self.device = dist_utils.init_from_env(
            resolve_device(config.device), timeout_s=float(config.dist_timeout_s)
        )
        self.rank = dist_utils.get_rank()
        self.world_size = dist_utils.get_world_size()
        if self.rank != 0:  # one progress bar and one log, from rank 0
            self.progress, self.log = False, None
        self.amp = config.amp if config.amp is not None else self.device.type == "cuda"
        task_kwargs = dict(config.task_kwargs)
        if config.batch_size is not None:
            task_kwargs["batch_size"] = config.batch_size
        self.task: Task = make_task(config.model, seed=config.seed, **task_kwargs)
        if config.steps is not None and config.epochs is not None:
            raise ValueError("TrainConfig: give steps or epochs, not both")
        if config.steps is not None:
            self.total_steps = int(config.steps)
        elif config.epochs is not None:
            self.total_steps = math.ceil(config.epochs * self.task.steps_per_epoch)
        else:
            raise ValueError("TrainConfig: steps or epochs is required")
        if self.total_steps < 1:
            raise ValueError(f"TrainConfig: the run must have >= 1 step, got {self.total_steps}")
        torch.manual_seed(config.seed)
        self.model: nn.Module = self.task.make_model().to(self.device)
        self.strategy: Strategy = make_strategy(config.method, **config.strategy_kwargs)
        self.params_before = count_parameters(self.model)
        self.optimizer: torch.optim.Optimizer | None = None
        self._ddp: nn.Module | None = None  # the DistributedDataParallel wrapper, if any
        self.step = 0
        self.losses: list[float] = []
        self.evals: list[dict[str, Any]] = []
        self.interrupted: str | None = None  # the signal that stopped fit(), if any
        # Wall time and items per phase: "dense" before the strategy's switch, "lowrank" after.
        self.phase_time = {"dense": 0.0, "lowrank": 0.0}
        self.phase_items = {"dense": 0, "lowrank": 0}
        self._val = None

    # -- the strategy's view of the run (StrategyContext) -------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the task's training split."""
        return self.task.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        """``config.warmup_steps``: linear LR warm-up (and default re-warm-up)."""
        return self.config.warmup_steps

    @property
    def min_lr_ratio(self) -> float:
        """``config.min_lr_ratio``: final LR of the cosine, relative to ``config.lr``."""
        return self.config.min_lr_ratio

    @property
    def filter_fn(self) -> FilterFn:
        """The task's ``(module, fqn) -> bool``: the layers low-rank methods touch."""
        return self.task.filter_fn

    def example_input(self) -> torch.Tensor:
        """One training input batch of the task on :attr:`device` (for the profiler)."""
        return self.task.example_input(self.device)

    def log_info(self, message: str) -> None:
        """``log(message)``; nothing when the trainer is silent (``log=None``, rank > 0)."""
        if self.log is not None:
            self.log(message)

    # -- optimizer ----------------------------------------------------------------------------

    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = self.strategy.param_groups(self.model, self.config.weight_decay)
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=self.config.betas)

    def rebuild_optimizer(self) -> None:
        """New optimizer for the current parameters; surviving parameters keep their state."""
        old, self.optimizer = self.optimizer, self._make_optimizer()
        carry_optimizer_state(old, self.optimizer)

    # -- distributed --------------------------------------------------------------------------

    def _wrap(self) -> None:
        """(Re-)wrap the current model in DDP; without a process group, train it directly."""
        self._ddp = None  # drop the old wrapper (and its reducer hooks) first
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids)

    @property
    def train_model(self) -> nn.Module:
        """The module the training forward runs through: the DDP wrapper or the model."""
        return self._ddp if self._ddp is not None else self.model

    def _structure_changed(self) -> None:
        """After a structural change: same weights everywhere, new optimizer, new wrapper."""
        dist_utils.broadcast_module_(self.model)
        self.rebuild_optimizer()
        self._wrap()

    # -- the loop -----------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _phase(self) -> str:
        switch = self.strategy.switch_step
        return "lowrank" if switch is not None and self.step >= switch else "dense"

    def train_step(self) -> float:
        """Run optimizer step ``self.step``; returns its training loss."""
        if self.optimizer is None:
            self.strategy.setup(self)
            self._structure_changed()
        elif self.world_size > 1 and self._ddp is None:  # resumed from a checkpoint
            self._wrap()
        factor = self.strategy.lr_factor(self.step, self)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * factor
        # Process r of N takes batch step·N + r (one process: batch `step`, as before).
        x, y = self.task.train_batch(self.step * self.world_size + self.rank, self.device)
        self.model.train()
        with self._autocast():
            loss = self.task.loss(self.train_model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        self.strategy.decay_factors(self.model, self.config.lr * factor * self.config.weight_decay)
        # The mean over processes, so every process records (and reports) the same losses.
        value = dist_utils.all_reduce_mean(float(loss.detach()), self.device)
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {self.step}")
        self.losses.append(value)
        self.step += 1
        if self.strategy.after_step(self, self.step):
            self._structure_changed()
            if self.log is not None:  # skips the summary's cost on silent runs
                ranks = self.strategy.ranks(self.model)
                self.log_info(
                    f"[{self.strategy.name}] structure changed after step {self.step}: "
                    f"{len(ranks)} low-rank layers, params {count_parameters(self.model):,}"
                )
        return value

    def fit(
        self,
        until: int | None = None,
        *,
        checkpoint: str | os.PathLike | None = None,
        save_every: int | None = None,
    ) -> Trainer:
        """Train until ``until`` completed steps (default: the whole run).

        Args:
            until: stop after this many completed steps.
            checkpoint: save here every ``save_every`` steps, at the end, and when
                interrupted (atomically: the last good checkpoint survives any crash).
            save_every: steps between saves (default: a tenth of the run, at least 100).

        SIGINT and SIGTERM (in the main thread) finish the current step, save the
        checkpoint and stop; :attr:`interrupted` then names the signal.
        """
        until = self.total_steps if until is None else min(until, self.total_steps)
        if save_every is None:
            save_every = max(100, self.total_steps // 10)
        stop: list[int] = []
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, lambda n, _frame: stop.append(n))
        eval_every = self.config.eval_every or max(1, self.total_steps // 5)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.total_steps,
                initial=self.step,
                desc=f"{self.config.model}/{self.strategy.name}",
                dynamic_ncols=True,
                leave=False,
            )
        try:
            while self.step < until:
                phase = self._phase()
                self._sync()
                start = time.perf_counter()
                loss = self.train_step()
                self._sync()
                elapsed = time.perf_counter() - start
                self.phase_time[phase] += elapsed
                self.phase_items[phase] += self.task.items_per_batch * self.world_size
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(self._postfix(loss, elapsed), refresh=False)
                if self.step % eval_every == 0 or self.step == self.total_steps:
                    self.evals.append({"step": self.step, **self.evaluate()})
                if stop:
                    self.interrupted = signal.Signals(stop[0]).name
                    break
                if checkpoint is not None and self.step % save_every == 0:
                    self.save(checkpoint)
            if checkpoint is not None and self.step > 0:
                self.save(checkpoint)
        except RuntimeError as exc:
            if self.world_size > 1 and "timed out" in str(exc).lower():
                raise RuntimeError(
                    f"no answer from a peer process within dist_timeout_s="
                    f"{self.config.dist_timeout_s:g} s at step {self.step} (is one stopped, "
                    f"hung or dead?): {str(exc).strip().splitlines()[0]}"
                ) from exc
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if bar is not None:
                bar.close()
        return self

    def _postfix(self, loss: float, elapsed: float) -> str:
        ranks = list(self.strategy.ranks(self.model).values())
        rank_str = "full" if not ranks else f"{min(ranks)}-{max(ranks)}"
        rate = self.task.items_per_batch * self.world_size / max(elapsed, 1e-9)
        return f"loss={loss:.3f} {self.task.items_name}/s={rate:,.0f} ranks={rank_str}"

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss (and accuracy for classification) over the task's validation batches."""
        if self._val is None:
            self._val = self.task.val_batches(self.device)
        self.model.eval()
        losses, correct, count = [], 0, 0
        for x, y in self._val:
            with self._autocast():
                out = self.model(x)
            losses.append(float(self.task.loss(out, y)))
            if out.dim() == 2:
                correct += int((out.argmax(-1) == y).sum())
                count += y.numel()
        self.model.train()
        result = {"val_loss": sum(losses) / len(losses)}
        if count:
            result["val_accuracy"] = correct / count
        return result

    # -- report -------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The run's JSON-serialisable report (every key of :data:`REPORT_KEYS` and more)."""
        train_time = sum(self.phase_time.values())
        items = sum(self.phase_items.values())
        last = self.evals[-1] if self.evals and self.evals[-1]["step"] == self.step else None
        final_eval = last or {"step": self.step, **self.evaluate()}
        window = self.losses[-10:]
        backend = get_backend()
        if backend == "auto":
            resolved = resolve_backend(self.device).name
            if resolved == "auto":  # measured per shape on GPUs: say what it picked
                picks = Counter(d["backend"] for d in dispatch_decisions().values())
                resolved = ", ".join(f"{name} x{n}" for name, n in picks.most_common()) or "-"
            backend = f"auto ({resolved})"

        def rate(phase: str) -> float | None:
            t = self.phase_time[phase]
            return self.phase_items[phase] / t if t > 0 else None

        return {
            "method": self.strategy.name,
            "model": self.config.model,
            "device": str(self.device)
            + (
                f" ({torch.cuda.get_device_name(self.device)})"
                if self.device.type == "cuda"
                else ""
            ),
            "backend": backend,
            "switch_step": self.strategy.switch_step,
            "ranks": self.strategy.ranks(self.model),
            "params_before": self.params_before,
            "params_after": count_parameters(self.model),
            "trainable_params_after": count_parameters(self.model, trainable_only=True),
            "train_time_s": train_time,
            "tokens_per_s": items / train_time if train_time > 0 else None,
            "tokens_per_s_dense_phase": rate("dense"),
            "tokens_per_s_lowrank_phase": rate("lowrank"),
            "items": self.task.items_name,
            "final_train_loss": sum(window) / len(window) if window else None,
            "final_val_loss": final_eval["val_loss"],
            "final_val_accuracy": final_eval.get("val_accuracy"),
            "steps": self.step,
            "interrupted": self.interrupted,
            "world_size": self.world_size,
            "evals": list(self.evals),
            "rank_history": [dict(entry) for entry in self.strategy.rank_history],
            "strategy": {"preset": self.strategy.preset, **self.strategy.report()},
            "config": self.config.to_dict(),
        }

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly (see :meth:`from_checkpoint`)."""
        if self.optimizer is None:
            raise RuntimeError("Trainer.state_dict: nothing to save before the first step")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "step": self.step,
            "strategy": self.strategy.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "losses": list(self.losses),
            "evals": list(self.evals),
            "params_before": self.params_before,
            "phase_time": dict(self.phase_time),
            "phase_items": dict(self.phase_items),
        }
        return {**state, "digest": state_digest(state)}

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint to ``path`` atomically (a temporary file renamed over it, so
        the previous checkpoint survives a crash or a full disk); under torchrun on rank 0
        only.

        No collective is involved, so calling it from rank 0 alone is fine too.
        """
        if self.rank == 0:
            atomic_torch_save(self.state_dict(), path)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike | dict[str, Any],
        *,
        progress: bool = True,
        log=print,
        **overrides: Any,
    ) -> Trainer:
        """Rebuild a trainer from :meth:`save`'s file and continue where it stopped.

        Args:
            checkpoint: the file, or what :func:`load_checkpoint` read from it.
            progress, log: as for the constructor.
            overrides: config fields to set. Those in :data:`RESUME_SAFE_FIELDS` do not
                change the run's math and are applied; any other must equal the saved
                value (for ``task_kwargs``/``strategy_kwargs``: every given entry), so a
                resumed run is always the run that was saved. The device must match for
                bit-exact continuation.

        Raises:
            FileNotFoundError, ValueError: see :func:`load_checkpoint`.
            ValueError: an override would change the run, or the saved strategy state
                belongs to another method.
            TypeError: an override names no config field.
        """
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        config = resumed_config(ckpt["config"], overrides)
        saved_method = ckpt["strategy"].get("method")
        if saved_method != config.method:  # before the config builds the wrong strategy
            raise ValueError(
                f"from_checkpoint: the strategy state was saved by method {saved_method!r}, "
                f"not {config.method!r} as the checkpoint's config says"
            )
        trainer = cls(config, progress=progress, log=log)
        trainer.strategy.load_state_dict(ckpt["strategy"])
        trainer.strategy.restore_model(trainer, ckpt["model"])
        trainer.model.to(trainer.device)
        trainer.optimizer = trainer._make_optimizer()
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.step = ckpt["step"]
        trainer.losses = list(ckpt["losses"])
        trainer.evals = list(ckpt["evals"])
        trainer.params_before = ckpt["params_before"]
        trainer.phase_time = dict(ckpt["phase_time"])
        trainer.phase_items = dict(ckpt["phase_items"])
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        return trainer


#: Config fields a resumed run may change: where it runs and how often it evaluates,
#: never what it computes.
RESUME_SAFE_FIELDS = ("eval_every", "device", "dist_timeout_s")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :meth:`Trainer.save`, verified against its digest.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is not a checkpoint, has another version, or its contents do
            not match the digest stored with them (corrupted or edited).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_checkpoint: {path} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        first_line = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise ValueError(
            f"from_checkpoint: {path} is not a readable lowrank-kernels checkpoint "
            f"(torch.load: {type(exc).__name__}: {first_line})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        found = ckpt.get("version") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"from_checkpoint: {path} has checkpoint version {found!r}, "
            f"expected {CHECKPOINT_VERSION}"
        )
    verify_digest({k: v for k, v in ckpt.items() if k != "digest"}, ckpt.get("digest"), path)
    return ckpt


def resumed_config(saved: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """The config of a resumed run: ``saved`` (:meth:`TrainConfig.to_dict`) with the
    ``overrides`` of :data:`RESUME_SAFE_FIELDS` applied; see :meth:`Trainer.from_checkpoint`.

    Raises:
        TypeError: an override names no config field.
        ValueError: an override of another field differs from the saved value.
    """
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    data = dict(saved)
    for key, value in overrides.items():
        if key not in names:
            raise TypeError(f"from_checkpoint: {key!r} is not a TrainConfig field ({names})")
        if key in RESUME_SAFE_FIELDS:
            data[key] = value
            continue
        current = saved.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            differs = {k: v for k, v in value.items() if k not in current or current[k] != v}
            if differs:
                given = ", ".join(f"{k}={v!r}" for k, v in differs.items())
                raise ValueError(
                    f"from_checkpoint: {key} {given} differs from the checkpoint's {key} "
                    f"{current!r}; {_RESUME_RULE}"
                )
            continue
        same = list(value) == list(current) if key == "betas" else value == current
        if not same:
            raise ValueError(
                f"from_checkpoint: {key}={value!r} differs from the checkpoint's "
                f"{key}={current!r}; {_RESUME_RULE}"
            )
    return TrainConfig.from_dict(data)


_RESUME_RULE = (
    "a resumed run keeps the config it was saved with "
    f"(only {', '.join(RESUME_SAFE_FIELDS)} may change)"
)


def train(config: TrainConfig, *, progress: bool = True, log=print) -> dict[str, Any]:
    """Run ``config`` to the end and return its report."""
    return Trainer(config, progress=progress, log=log).fit().report()
