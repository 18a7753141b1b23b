"""`nnUNetTrainerHntsegShort`: nnU-Net's default trainer with a shorter schedule (smoke runs).

Everything (network, loss, SGD lr 0.01 poly 0.9, augmentation) is nnUNetTrainer's; only
the number of epochs, iterations per epoch and validation iterations change, read from
environment variables that `hntseg.train.train` sets in its own process:

    HNTSEG_EPOCHS, HNTSEG_ITERATIONS, HNTSEG_VAL_ITERATIONS, HNTSEG_FINAL_VALIDATION (0/1)

This module is imported by nnU-Net's trainer lookup as a top-level module (it lives in the
`nnUNet_extTrainer` folder), so it imports nothing from hntseg.
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env_int(name: str, default: int) -> int:
    """A whole number >= 1 from the environment (unset: the default)."""
    value = os.environ.get(name)
    if not value:
        return default
    if not value.strip().isdecimal() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: expected a whole number >= 1")
    return int(value)


class nnUNetTrainerHntsegShort(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
    """nnUNetTrainer with epochs / iterations from HNTSEG_* variables: a labelled smoke run."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's signature)
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int("HNTSEG_EPOCHS", self.num_epochs)
        self.num_iterations_per_epoch = _env_int("HNTSEG_ITERATIONS", self.num_iterations_per_epoch)
        self.num_val_iterations_per_epoch = _env_int(
            "HNTSEG_VAL_ITERATIONS", self.num_val_iterations_per_epoch
        )
        self.final_validation = os.environ.get("HNTSEG_FINAL_VALIDATION", "1") != "0"
        self.save_every = max(1, min(self.save_every, self.num_epochs))

    def on_train_start(self):
        self.print_to_log_file(
            f"SMOKE RUN (hntseg short trainer): {self.num_epochs} epoch(s) x "
            f"{self.num_iterations_per_epoch} iteration(s), {self.num_val_iterations_per_epoch} "
            "validation iteration(s) per epoch; the paper trains 1000 x 250. Not a usable model."
        )
        super().on_train_start()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if not self.final_validation:
            self.print_to_log_file("SMOKE RUN: final full validation skipped")
            return
        super().perform_actual_validation(save_probabilities)
