"""Typed view of the workspace's params.yaml (training hyperparameters live there)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipelines.images import InputSpec

__all__ = ["Params", "DataParams", "ModelParams", "TrainParams", "EvalParams", "RegisterParams", "load_params"]


class DataParams(BaseModel):
    classes: list[str]
    #: The model's input: image_size x image_size pixels, 1 (grey) or 3 (RGB) channels.
    image_size: int = Field(default=8, ge=1)
    channels: Literal[1, 3] = 1
    #: How an image of another shape becomes a square: "squash" (every pixel kept, aspect
    #: changed: the default, what digits and small icons want), "pad" (fit inside, padded
    #: black) or "center_crop" (the largest centred square: photos).
    resize: Literal["squash", "pad", "center_crop"] = "squash"

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.image_size, self.channels, self.resize)
    #: Several annotators on one image: "latest" (last update wins) or "majority" (ties
    #: are held back for review). pipelines/labels.py applies it.
    label_policy: Literal["latest", "majority"] = "latest"


class ModelParams(BaseModel):
    """Which network: today's small CNN trained from scratch (digits), or a pretrained
    `keras.applications` backbone with a small trained head (photos)."""

    kind: Literal["small_cnn", "backbone"] = "small_cnn"
    #: A keras.applications architecture by name (pipelines.models.BACKBONES lists them).
    backbone: str = "MobileNetV3Small"
    #: "imagenet" (Keras downloads the file), "none" (random init), or a path or http(s) URL
    #: of a weights file; its sha256 is recorded in the model's lineage.
    weights: str = "imagenet"
    dropout: float = Field(default=0.2, ge=0, lt=1)
    #: 0: frozen backbone, the head trains on cached embeddings (seconds on a CPU);
    #: N > 0: the top N layers are fine-tuned too (the GPU Job's work).
    fine_tune_layers: int = Field(default=0, ge=0)


class TrainParams(BaseModel):
    epochs: int = Field(default=60, ge=1)
    #: At least this many optimizer steps, whatever the dataset size: 60 epochs of 20
    #: labels are only 120 steps of 16, and such undertrained models cost the
    #: active-learning loop its first rounds (see bench/active_learning.py). 0 turns it off.
    min_steps: int = Field(default=400, ge=0)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=0.003, gt=0)
    seed: int = 0
    #: The first model trains once every class has this many training labels (cold start).
    min_per_class: int = Field(default=2, ge=1)
    #: Random flips, small translations and colour jitter while training (Keras
    #: preprocessing layers, inactive at inference). Off for digits: a flipped 2 is no 2.
    augment: bool = False


class EvalParams(BaseModel):
    """The evaluation set annotators label when no labeled test set exists: a seeded uniform
    sample of the pool, never trained on and never chosen by a query strategy."""

    #: Share of newly imported unlabeled images reserved for evaluation (0: none).
    fraction: float = Field(default=0.1, ge=0, lt=1)
    max_images: int = Field(default=500, ge=0)
    #: One evaluation task in every `every` tasks of the queue until the set is large enough.
    every: int = Field(default=5, ge=2)
    #: The gate judges on the evaluation set once it holds `min_labels` labels and
    #: `min_per_class` per class; before that, k-fold cross-validation on the training labels.
    min_labels: int = Field(default=30, ge=1)
    min_per_class: int = Field(default=2, ge=0)
    cv_folds: int = Field(default=3, ge=2)
    seed: int = 0


class RegisterParams(BaseModel):
    model_name: str = "labelloop-classifier"


class Params(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    data: DataParams
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    # "eval" in params.yaml.
    evaluation: EvalParams = Field(default=EvalParams(), alias="eval")
    # "register" is the stage's name in params.yaml; it would shadow ABCMeta.register.
    registration: RegisterParams = Field(default=RegisterParams(), alias="register")

    def dump(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.model_dump(by_alias=True), sort_keys=False))


def load_params(path: Path) -> Params:
    return Params.model_validate(yaml.safe_load(path.read_text()))
