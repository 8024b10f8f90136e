"""Low-rank training: strategies (full, fixed, Cuttlefish, ReLoRA, InRank), one trainer
for all of them, small offline tasks (char GPT on pydoc text, digits CNN) and the demo."""

from .data import CharLMTask, DigitsTask, Task, make_task, pydoc_text
from .models import CharGPT, DigitsCNN
from .report import demo_configs, format_demo, run_demo, write_report
from .strategies import (
    STRATEGIES,
    Cuttlefish,
    Fixed,
    FullRank,
    InRank,
    ReLoRA,
    Strategy,
    frobenius_decay_,
    frobenius_penalty,
    make_strategy,
)
from .trainer import REPORT_KEYS, TrainConfig, Trainer, train

__all__ = [
    "REPORT_KEYS",
    "STRATEGIES",
    "CharGPT",
    "CharLMTask",
    "Cuttlefish",
    "DigitsCNN",
    "DigitsTask",
    "Fixed",
    "FullRank",
    "InRank",
    "ReLoRA",
    "Strategy",
    "Task",
    "TrainConfig",
    "Trainer",
    "demo_configs",
    "format_demo",
    "frobenius_decay_",
    "frobenius_penalty",
    "make_strategy",
    "make_task",
    "pydoc_text",
    "run_demo",
    "train",
    "write_report",
]
