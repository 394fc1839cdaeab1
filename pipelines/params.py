"""Typed view of the workspace's params.yaml (training hyperparameters live there)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Params", "DataParams", "TrainParams", "RegisterParams", "load_params"]


class DataParams(BaseModel):
    classes: list[str]
    image_size: int = Field(default=8, ge=1)
    #: Several annotators on one image: "latest" (last update wins) or "majority" (ties
    #: are held back for review). pipelines/labels.py applies it.
    label_policy: Literal["latest", "majority"] = "latest"


class TrainParams(BaseModel):
    epochs: int = Field(default=60, ge=1)
    #: At least this many optimizer steps, whatever the dataset size: 60 epochs of 20
    #: labels are only 120 steps of 16, and such undertrained models cost the
    #: active-learning loop its first rounds (see bench/active_learning.py). 0 turns it off.
    min_steps: int = Field(default=400, ge=0)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=0.003, gt=0)
    seed: int = 0


class RegisterParams(BaseModel):
    model_name: str = "labelloop-classifier"


class Params(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    data: DataParams
    train: TrainParams = TrainParams()
    # "register" is the stage's name in params.yaml; it would shadow ABCMeta.register.
    registration: RegisterParams = Field(default=RegisterParams(), alias="register")

    def dump(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.model_dump(by_alias=True), sort_keys=False))


def load_params(path: Path) -> Params:
    return Params.model_validate(yaml.safe_load(path.read_text()))
