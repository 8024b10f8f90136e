"""Offline data sets and the tasks the trainer runs.

* ``gpt``: next-character prediction on the English text of Python's own
  ``pydoc_data.topics`` (ships with CPython, about 465k characters).
* ``cnn``: scikit-learn's bundled 8×8 ``digits`` (1797 images, 10 classes).

Batches are a pure function of ``(seed, step)`` (a fresh generator per step), so a
resumed run sees exactly the batches the original run would have seen without any
data-loader state in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import check_int
from .models import CharGPT, DigitsCNN, cnn_filter, gpt_filter

Batch = tuple[torch.Tensor, torch.Tensor]

# Typographic characters of the pydoc text, mapped to ASCII so the vocabulary stays small.
_ASCII_MAP = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "—": "-", "–": "-"})


def pydoc_text() -> str:
    """The text of all ``pydoc_data.topics`` entries, concatenated in sorted-key order, ASCII."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics)).translate(_ASCII_MAP)
    text = text.replace("…", "...")
    return "".join(ch for ch in text if ch == "\n" or 32 <= ord(ch) < 127)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class Task:
    """What the trainer needs from a workload: a model factory, batches and a loss.

    Attributes:
        name: ``"gpt"`` or ``"cnn"``.
        items_name: what throughput counts (``"tokens"`` or ``"samples"``).
        items_per_batch: tokens (or samples) per training batch.
        steps_per_epoch: optimizer steps in one pass over the training split.
        filter_fn: ``filter_fn(module, fqn) -> bool``, the layers low-rank methods touch.
        config: the constructor arguments, so a checkpoint can rebuild the task.
    """

    name: str
    items_name: str
    items_per_batch: int
    steps_per_epoch: int
    filter_fn: Callable[[nn.Module, str], bool]
    config: dict

    def make_model(self) -> nn.Module:
        """A freshly initialised model (draws from the global torch RNG)."""
        raise NotImplementedError

    def train_batch(self, step: int, device: torch.device) -> Batch:
        """The training batch of optimizer step ``step`` (deterministic in seed and step)."""
        raise NotImplementedError

    def val_batches(self, device: torch.device) -> list[Batch]:
        """The fixed validation batches."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (computed in fp32) of ``output [..., C]`` against ``target [...]``."""
        return F.cross_entropy(output.flatten(0, -2).float(), target.flatten())

    def example_input(self, device: torch.device) -> torch.Tensor:
        """One training input, for profiling layers at their real shapes."""
        return self.train_batch(0, device)[0]


class CharLMTask(Task):
    """Character-level language modelling on :func:`pydoc_text` (90/10 train/val split).

    Inputs ``[batch_size, block_size]`` token ids, targets the same shifted by one.
    """

    name = "gpt"
    items_name = "tokens"

    def __init__(
        self,
        batch_size: int = 16,
        block_size: int = 64,
        seed: int = 0,
        eval_batches: int = 8,
        model_kwargs: dict | None = None,
    ) -> None:
        check_int(batch_size, "batch_size", owner="CharLMTask")
        check_int(block_size, "block_size", owner="CharLMTask")
        self.config = {
            "batch_size": batch_size,
            "block_size": block_size,
            "seed": seed,
            "eval_batches": eval_batches,
            "model_kwargs": dict(model_kwargs or {}),
        }
        text = pydoc_text()
        self.chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        data = torch.tensor([self.stoi[ch] for ch in text], dtype=torch.long)
        split = int(0.9 * len(data))
        self.train_data, self.val_data = data[:split], data[split:]
        self.batch_size, self.block_size, self.seed = batch_size, block_size, seed
        self.eval_batches = eval_batches
        self.model_kwargs = dict(model_kwargs or {})
        self.items_per_batch = batch_size * block_size
        self.steps_per_epoch = max(1, len(self.train_data) // self.items_per_batch)
        self.filter_fn = gpt_filter

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters (about 94 printable ASCII + newline)."""
        return len(self.chars)

    def make_model(self) -> nn.Module:
        return CharGPT(self.vocab_size, block_size=self.block_size, **self.model_kwargs)

    def _windows(self, data: torch.Tensor, starts: torch.Tensor, device: torch.device) -> Batch:
        offsets = torch.arange(self.block_size + 1)
        windows = data[starts[:, None] + offsets]  # [B, T+1]
        return windows[:, :-1].to(device), windows[:, 1:].to(device)

    def train_batch(self, step: int, device: torch.device) -> Batch:
        high = len(self.train_data) - self.block_size - 1
        starts = torch.randint(
            0, high, (self.batch_size,), generator=_step_generator(self.seed, step)
        )
        return self._windows(self.train_data, starts, device)

    def val_batches(self, device: torch.device) -> list[Batch]:
        # Evenly spaced windows over the whole validation split, the same for every run.
        count = self.eval_batches * self.batch_size
        high = len(self.val_data) - self.block_size - 1
        starts = torch.linspace(0, high, count).long()
        return [
            self._windows(self.val_data, chunk, device) for chunk in starts.split(self.batch_size)
        ]


class DigitsTask(Task):
    """Classification of scikit-learn's bundled 8×8 digits (fixed 1500/297 train/val split).

    Inputs ``[batch_size, 1, 8, 8]`` in ``[0, 1]``, targets ``[batch_size]`` class ids.
    """

    name = "cnn"
    items_name = "samples"

    def __init__(
        self,
        batch_size: int = 64,
        seed: int = 0,
        eval_batches: int = 0,
        model_kwargs: dict | None = None,
    ) -> None:
        from sklearn.datasets import load_digits

        check_int(batch_size, "batch_size", owner="DigitsTask")
        self.config = {
            "batch_size": batch_size,
            "seed": seed,
            "eval_batches": eval_batches,
            "model_kwargs": dict(model_kwargs or {}),
        }
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
        n_val = 297
        self.val_x, self.val_y = images[order[:n_val]], labels[order[:n_val]]
        self.train_x, self.train_y = images[order[n_val:]], labels[order[n_val:]]
        if batch_size > len(self.train_y):
            raise ValueError(
                f"DigitsTask: batch_size must be <= {len(self.train_y)}, got {batch_size}"
            )
        self.batch_size, self.seed = batch_size, seed
        self.model_kwargs = dict(model_kwargs or {})
        self.items_per_batch = batch_size
        self.steps_per_epoch = len(self.train_y) // batch_size  # drop the last partial batch
        self.filter_fn = cnn_filter

    def make_model(self) -> nn.Module:
        return DigitsCNN(**self.model_kwargs)

    def train_batch(self, step: int, device: torch.device) -> Batch:
        epoch, index = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(len(self.train_y), generator=_step_generator(self.seed, epoch))
        idx = perm[index * self.batch_size : (index + 1) * self.batch_size]
        return self.train_x[idx].to(device), self.train_y[idx].to(device)

    def val_batches(self, device: torch.device) -> list[Batch]:
        return [
            (x.to(device), y.to(device))
            for x, y in zip(
                self.val_x.split(self.batch_size), self.val_y.split(self.batch_size), strict=True
            )
        ]


TASKS: dict[str, type[Task]] = {"gpt": CharLMTask, "cnn": DigitsTask}


def make_task(name: str, **kwargs) -> Task:
    """Build the task ``name`` (``"gpt"`` or ``"cnn"``) with its constructor ``kwargs``."""
    if name not in TASKS:
        raise ValueError(f"make_task: model must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](**kwargs)
