"""Low-rank training: strategies (full, fixed, Cuttlefish, ReLoRA, InRank), one trainer
for all of them, small offline tasks (char GPT on pydoc text, digits CNN) and the demo.

Strategies see the run only through a :class:`StrategyContext` (``train/context.py``),
which the trainer and the Hugging Face / Lightning integrations implement."""

from .context import StrategyContext, carry_optimizer_state
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
    "StrategyContext",
    "Task",
    "TrainConfig",
    "Trainer",
    "carry_optimizer_state",
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
