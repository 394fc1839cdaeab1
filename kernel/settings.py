"""The one settings object of labelloop.

Every ``LABELLOOP_*`` environment variable is declared here and nowhere else.
Values come from (highest first): keyword arguments, environment, ``labelloop.yaml``
in the current directory (or the file named by ``LABELLOOP_CONFIG``), defaults.
Build it once (`Settings.load()`) and pass it down; a package below the loop gets only
its typed section (`settings.serving`, `settings.label_studio`, `settings.kubernetes`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from kernel.errors import ConfigError

__all__ = [
    "CONFIG_FILE_ENV",
    "CaptureSettings",
    "DriftSettings",
    "KubernetesSettings",
    "LabelStudioSettings",
    "ServingSettings",
    "Settings",
]

#: Names the YAML config file; read only inside `Settings.load`.
CONFIG_FILE_ENV = "LABELLOOP_CONFIG"


def gpu_visible() -> bool:
    """An NVIDIA device node exists and CUDA_VISIBLE_DEVICES does not hide it (no driver
    call: the settings are read before anything imports a framework)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists()


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True)


class LabelStudioSettings(_Section):
    """How to reach Label Studio (the gateway, the service's image fetcher)."""

    url: str
    token: SecretStr | None = None
    files_root: Path
    project_title: str = "labelloop"

    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None


class CaptureSettings(_Section):
    """Which client images the service keeps for labeling (`LABELLOOP_CAPTURE_*`)."""

    min_confidence: float = 0.0
    max_confidence: float = 0.5
    sample_rate: float = 0.01
    drift_sample_rate: float = 0.2
    max_per_hour: int = 100
    max_per_day: int = 1000
    max_pending: int = 5000
    queue_size: int = 256


class DriftSettings(_Section):
    """How the service compares recent client images with the model's reference (`LABELLOOP_DRIFT_*`)."""

    window: int = 300
    min_samples: int = 100  # at most `window`
    check_every: int = 50
    p_value: float = 0.01
    components: int = 8


class ServingSettings(_Section):
    """Everything the service (and a client of it) needs; nothing of the loop."""

    url: str
    workers: int = 1
    one_process: bool = True  # the model in the answering process (Settings.serving_one_process)
    max_queue: int = 1024
    max_in_flight: int = 1024
    batching: bool = True
    max_batch_size: int = 64
    max_latency_ms: int = 10_000
    max_body_mb: float = 32.0
    api_key: SecretStr | None = None
    basic_auth_user: str | None = None
    basic_auth_password: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    fetch_concurrency: int = 16
    fetch_cache_mb: float = 64.0
    prediction_log: Path
    prediction_log_max_mb: float = 50.0
    promotion_file: Path | str
    events_dir: Path | str
    artifacts_url: str = ""
    model_poll_interval_s: float = 1.0
    query_strategy: str = "margin"
    label_studio: LabelStudioSettings
    # Production capture and drift (serving/capture.py, serving/drift.py); None: off.
    capture: CaptureSettings | None = None
    capture_dir: Path | str = ""
    drift: DriftSettings | None = None

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        if self.basic_auth_user and self.basic_auth_password is not None:
            return self.basic_auth_user, self.basic_auth_password.get_secret_value()
        return None


class KubernetesSettings(_Section):
    """The Kubernetes launcher's part."""

    namespace: str
    api_url: str
    job_template: Path | None
    training_image: str
    git_source: str
    gpus: int
    artifacts_url: str
    training_timeout_s: float
    keras_backend: str


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LABELLOOP_",
        extra="ignore",
        yaml_file="labelloop.yaml",
    )

    # --- where things live -------------------------------------------------------
    home: Path = Field(
        default=Path(".labelloop"),
        description="State directory: BentoML model store, loop state, logs, run dirs.",
    )
    workspace: Path = Field(
        default=Path("workspace"), description="The git+DVC data workspace the loop manages."
    )
    dvc_remote: str = Field(
        default="",
        description="Any DVC remote URL (s3://..., /path). Empty: <home>/dvc-remote.",
    )

    # --- Label Studio ------------------------------------------------------------
    label_studio_url: str = "http://127.0.0.1:8080"
    label_studio_api_key: SecretStr | None = Field(
        default=None, description="Legacy token or personal access token."
    )
    label_studio_username: str = "admin@labelloop.local"
    label_studio_password: SecretStr = SecretStr("labelloop-admin")
    label_studio_venv: Path = Field(
        default=Path(".venv-labelstudio"),
        description="Venv holding label-studio (started by `labelloop up`/`demo`).",
    )
    project_title: str = "labelloop"
    label_studio_files_root: Path | None = Field(
        default=None,
        description="Label Studio's LOCAL_FILES_DOCUMENT_ROOT. Empty: the workspace.",
    )

    # --- serving -----------------------------------------------------------------
    service_host: str = "127.0.0.1"
    service_port: int = 3000
    service_url: str = Field(
        default="",
        description="How Label Studio and the loop reach the service. Empty: from host/port.",
    )
    dashboard_port: int = Field(
        default=3001, ge=0, le=65535,
        description="The dashboard page (`labelloop up`, `schedule`, `dashboard`) on service_host. 0 or empty: off.",
    )

    @field_validator("dashboard_port", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        """LABELLOOP_DASHBOARD_PORT= (empty) turns the dashboard off, like 0."""
        return 0 if value is None or (isinstance(value, str) and not value.strip()) else value

    model_poll_interval_s: float = 1.0
    serving_workers: int = Field(
        default=1, ge=1, description="Model worker processes (each loads the promoted model)."
    )
    serving_topology: Literal["auto", "one_process", "model_workers"] = Field(
        default="auto",
        description="Where the model runs: in the process that answers requests (one_process), or in "
        "separate model-worker processes behind it (model_workers). auto: one process unless "
        "LABELLOOP_SERVING_WORKERS > 1 or a GPU is visible.",
    )
    serving_max_queue: int = Field(
        default=1024, ge=1,
        description="Client images waiting for the model: beyond it a request is answered 503 with "
        "Retry-After instead of queueing.",
    )
    serving_max_in_flight: int = Field(
        default=1024, ge=1,
        description="Client-API requests the service holds at once (received, not yet answered): the "
        "next one is answered 503 with Retry-After before its body is read.",
    )
    serving_batching: bool = Field(
        default=True, description="Adaptive batching of client requests (off: one pass per request)."
    )
    serving_max_batch_size: int = Field(default=64, ge=1)
    serving_max_latency_ms: int = Field(
        default=10_000, ge=1,
        description="BentoML's batching SLO: requests it expects to wait longer are shed (503).",
    )
    serving_max_body_mb: float = Field(
        default=32.0, gt=0, description="Larger request bodies are refused with 413."
    )
    serving_api_key: SecretStr | None = Field(
        default=None, description="Bearer key for the client API. Empty: no key required."
    )
    serving_basic_auth_user: str | None = Field(
        default=None, description="Basic auth for the Label Studio ML-backend routes."
    )
    serving_basic_auth_password: SecretStr | None = None
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Shared secret Label Studio sends in X-Labelloop-Webhook-Secret.",
    )
    fetch_concurrency: int = Field(default=16, ge=1, description="Parallel task-image fetches.")
    fetch_cache_mb: float = Field(default=64.0, ge=0, description="Fetched-image cache size.")
    prediction_log_max_mb: float = Field(
        default=50.0, gt=0, description="Rotate <home>/logs/predictions.jsonl at this size."
    )
    # --- production capture and drift (README "Production capture and drift") ---------
    capture_enabled: bool = Field(
        default=False, description="Keep client images answered with low confidence (and a random sample) "
        "for labeling: they join the pool as tasks tagged source: production.",
    )
    capture_url: str = Field(
        default="", description="Where the service keeps captured images until the loop imports them (a path, "
        "relative to the home, or an fsspec URL). Empty: <artifacts_url>/capture, else <home>/capture.",
    )
    capture_min_confidence: float = Field(default=0.0, ge=0, le=1)
    capture_max_confidence: float = Field(
        default=0.5, ge=0, le=1, description="Images whose top probability lies in [min, max] are captured.",
    )
    capture_sample_rate: float = Field(
        default=0.01, ge=0, le=1, description="Share of the other images captured at random (an unbiased view).",
    )
    capture_drift_sample_rate: float = Field(
        default=0.2, ge=0, le=1, description="The random share while the service detects drift.",
    )
    capture_max_per_hour: int = Field(default=100, ge=0)
    capture_max_per_day: int = Field(default=1000, ge=0)
    capture_max_pending: int = Field(
        default=5000, ge=0, description="Most captured images waiting for the loop: the store's total cap.",
    )
    capture_queue_size: int = Field(
        default=256, ge=1, description="Images waiting for the background writer; a full queue drops (counted).",
    )
    capture_import_interval_s: float = Field(
        default=300.0, gt=0, description="How often the scheduler imports captured images into the pool.",
    )
    capture_import_max: int = Field(default=1000, ge=1, description="Most captured images per data commit.")
    drift_enabled: bool = Field(default=True, description="Compare client inputs with the model's reference.")
    drift_window: int = Field(default=300, ge=10, description="The most recent client images compared.")
    drift_min_samples: int = Field(default=100, ge=10, description="No verdict before this many images.")
    drift_check_every: int = Field(default=50, ge=1, description="Test again after this many new images.")
    drift_p_value: float = Field(
        default=0.01, gt=0, lt=1, description="Family-wise significance of the three tests (Bonferroni).",
    )
    drift_components: int = Field(default=8, ge=1, description="PCA components of the embedding test.")
    drift_retrain: bool = Field(
        default=False, description="While drift is detected, queue a training run as soon as any new label "
        "arrived since the serving model (instead of waiting for LABELLOOP_RETRAIN_MIN_NEW_LABELS).",
    )

    # --- the loop ----------------------------------------------------------------
    collect_interval_s: float = 30.0
    collect_overlap_s: float = Field(
        default=300.0, ge=0,
        description="How far before the cursor each collect looks again (out-of-order saves).",
    )
    collect_full_interval_s: float = Field(
        default=3600.0, gt=0,
        description="How often a collect re-reads every annotated task (missed webhooks).",
    )
    retrain_interval_s: float = 30.0
    retrain_min_new_labels: int = Field(default=20, ge=1)
    retrain_cron: str = Field(
        default="", description="Also queue a training run on this crontab schedule (UTC), e.g. '0 3 * * *'."
    )
    job_backoff_max_s: float = Field(
        default=600.0, gt=0, description="A failing scheduler job retries with backoff up to this."
    )
    promotion_mode: Literal["auto", "manual"] = Field(
        default="auto",
        description="auto: the gate promotes a run that is not worse; manual: it marks it approved and "
        "`labelloop promote RUN` promotes it.",
    )
    keras_backend: Literal["tensorflow", "jax"] = Field(
        default="tensorflow",
        description="The Keras backend training runs on (the service always serves with TensorFlow; a model "
        "trained under JAX loads there).",
    )
    watch_folder: str | None = Field(
        default=None,
        description="A folder or an s3://bucket/prefix the scheduler syncs into the pool: new images become tasks.",
    )
    @field_validator("watch_folder", mode="before")
    @classmethod
    def _folder_or_url(cls, value: object) -> object:
        """A Path from Python code is a folder; text may also be an s3:// URL (kept as is:
        a Path would fold its '//')."""
        return str(value) if isinstance(value, Path) else value

    #: Read where boto reads it, so DVC, labelloop and Label Studio's S3 storage agree.
    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("s3_endpoint_url", "LABELLOOP_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="An S3-compatible server (MinIO, Ceph...); empty: AWS S3.",
    )
    s3_presign: bool = Field(
        default=True,
        description="Label Studio shows bucket images by presigned URLs (the annotators' browsers reach S3); "
        "false: Label Studio proxies them (S3 reachable only inside a cluster).",
    )
    watch_interval_s: float = Field(default=60.0, gt=0, description="How often the watched folder is synced.")
    #: The default is the active-learning benchmark's winner (fewest labels to 95%, README).
    #: One of `pipelines.strategies.STRATEGIES` (checked where a strategy is built: the
    #: kernel does not know the strategies).
    query_strategy: str = "margin"
    skip_queue: Literal["REQUEUE_FOR_OTHERS", "REQUEUE_FOR_ME", "IGNORE_SKIPPED"] = Field(
        default="REQUEUE_FOR_OTHERS",
        description="Skipped tasks: back in the queue for other annotators (not the one who skipped), "
        "for the same annotator later, or never again.",
    )
    query_batch_size: int = Field(
        default=10, ge=1, description="Tasks annotators take per round (batch-mode strategies pick this many)."
    )
    review_disagreements: bool = Field(
        default=True,
        description="A task whose annotators disagree with no majority goes back to the top of the "
        "queue for one more annotator (until review_max_annotators have labeled it).",
    )
    review_max_annotators: int = Field(default=3, ge=2)
    quality_suspects: bool = Field(
        default=True,
        description="After a collect that brought new labels, find likely wrong ones (cleanlab on out-of-sample "
        "probabilities) and re-queue them for one more annotator (loop/quality.py).",
    )
    quality_hold_suspects: bool = Field(
        default=True, description="Suspect labels stay out of training and evaluation until someone reviews them.",
    )
    quality_min_labels_per_class: int = Field(
        default=20, ge=5,
        description="Suspects are searched once there are this many labels per class on average (fewer: "
        "out-of-sample probabilities are too weak, and correct labels get flagged).",
    )
    query_class_balance: bool = Field(
        default=False,
        description="Each batch of query_batch_size tasks takes the predicted classes in turn (the rarest "
        "labeled class first), so rare classes stay represented.",
    )
    cold_start_diverse: int = Field(
        default=1000, ge=1,
        description="No model yet: this many pool tasks are queued in a diversity order "
        "(k-center greedy on the pixels), the rest after them in task order.",
    )
    launcher: Literal["local", "kubernetes"] = Field(
        default="local", description="Where training runs: a local process or a Kubernetes Job."
    )
    artifacts_url: str = Field(
        default="",
        description="Shared storage for models, run results and the promotion record "
        "(s3://..., a shared volume). Empty: this machine's BentoML store and home.",
    )
    k8s_namespace: str = "labelloop"
    k8s_api_url: str = Field(
        default="", description="Kubernetes API URL. Empty: in-cluster config, else kubeconfig."
    )
    k8s_job_template: Path | None = Field(
        default=None, description="The training Job template. Empty: k8s/base/training-job.yaml."
    )
    k8s_training_image: str = "ghcr.io/labelloop/labelloop-training:0.1.0"
    k8s_git_source: str = Field(
        default="", description="Git URL training pods clone the workspace from."
    )
    k8s_gpus: int = Field(default=1, ge=0, description="nvidia.com/gpu per training pod (0: CPU).")
    rescore_batch_size: int = Field(default=256, ge=1)
    training_timeout_s: float = 1800.0
    fault_kill_at: str = Field(
        default="", description="Testing only: crash points where the process SIGKILLs itself."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get(CONFIG_FILE_ENV, "labelloop.yaml")
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file),
            file_secret_settings,
        )

    @classmethod
    def load(cls, **overrides: object) -> "Settings":
        """Read the settings once; relative paths become absolute (processes change cwd).
        An invalid value is a ConfigError naming its variable, never a validation traceback."""
        try:
            settings = cls(**overrides)
        except ValidationError as exc:
            problems = "; ".join(
                f"LABELLOOP_{str(err['loc'][0]).upper()}={err.get('input')!r}: {err['msg'].lower()}"
                if err["loc"] else err["msg"] for err in exc.errors(include_url=False)
            )
            raise ConfigError(f"invalid setting ({problems}); fix the environment variable or "
                              f"{os.environ.get(CONFIG_FILE_ENV, 'labelloop.yaml')}") from None
        return settings.model_copy(
            update={
                "home": settings.home.expanduser().resolve(),
                "workspace": settings.workspace.expanduser().resolve(),
                "label_studio_venv": settings.label_studio_venv.expanduser().resolve(),
            }
        )

    # --- derived locations ---------------------------------------------------------
    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def promotion_file(self) -> Path | str:
        """The model-promotion record the service watches: in shared storage when there is
        one (serving replicas in other pods read it), else in the home directory."""
        if self.artifacts_url:
            return f"{self.artifacts_url.rstrip('/')}/promotion.json"
        return self.home / "promotion.json"

    @property
    def state_db(self) -> Path:
        return self.home / "state.db"

    @property
    def events_dir(self) -> Path | str:
        """Spool of Label Studio webhook events, written by the service, read by the loop
        (in shared storage when there is one: the two run in different pods)."""
        if self.artifacts_url:
            return f"{self.artifacts_url.rstrip('/')}/events"
        return self.home / "events"

    @property
    def capture_dir(self) -> Path | str:
        """Captured client images, written by the service, imported and removed by the loop
        (in shared storage when there is one: the two run in different pods)."""
        if self.capture_url:
            if "://" in self.capture_url:
                return self.capture_url
            # Relative to the home, which every process shares (their working directories differ).
            return (self.home / Path(self.capture_url).expanduser()).resolve()
        if self.artifacts_url:
            return f"{self.artifacts_url.rstrip('/')}/capture"
        return self.home / "capture"

    @property
    def prediction_log(self) -> Path:
        """JSON lines, one per prediction served, rotated (monitoring, drift analysis)."""
        return self.home / "logs" / "predictions.jsonl"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def label_studio_token_file(self) -> Path:
        """Where `labelloop up`/`demo` keep the token of the Label Studio they manage (0600)."""
        return self.home / "label-studio" / "labelloop-token"

    def label_studio_token(self) -> str | None:
        """The configured API key, else the token of the Label Studio labelloop manages."""
        if self.label_studio_api_key is not None:
            return self.label_studio_api_key.get_secret_value()
        if self.label_studio_token_file.exists():
            return self.label_studio_token_file.read_text().strip()
        return None

    @property
    def files_root(self) -> Path:
        return (self.label_studio_files_root or self.workspace).expanduser().resolve()

    @property
    def remote_url(self) -> str:
        return self.dvc_remote or str(self.home / "dvc-remote")

    @property
    def resolved_service_url(self) -> str:
        return self.service_url or f"http://{self.service_host}:{self.service_port}"

    @property
    def serving_one_process(self) -> bool:
        """The resolved topology: the hop to model workers pays only for several workers
        (they scale past one process's GIL) or a GPU (its runtime stays out of the process
        parsing HTTP); otherwise the process answering requests holds the model."""
        if self.serving_topology != "auto":
            return self.serving_topology == "one_process"
        return self.serving_workers == 1 and not gpu_visible()

    # --- typed sections: what each package below the loop receives --------------------
    @property
    def label_studio(self) -> LabelStudioSettings:
        token = self.label_studio_token()
        return LabelStudioSettings(
            url=self.label_studio_url, token=SecretStr(token) if token else None,
            files_root=self.files_root, project_title=self.project_title,
        )

    @property
    def serving(self) -> ServingSettings:
        return ServingSettings(
            url=self.resolved_service_url, workers=self.serving_workers, batching=self.serving_batching,
            one_process=self.serving_one_process, max_queue=self.serving_max_queue,
            max_in_flight=self.serving_max_in_flight,
            max_batch_size=self.serving_max_batch_size, max_latency_ms=self.serving_max_latency_ms,
            max_body_mb=self.serving_max_body_mb, api_key=self.serving_api_key,
            basic_auth_user=self.serving_basic_auth_user, basic_auth_password=self.serving_basic_auth_password,
            webhook_secret=self.webhook_secret, fetch_concurrency=self.fetch_concurrency,
            fetch_cache_mb=self.fetch_cache_mb, prediction_log=self.prediction_log,
            prediction_log_max_mb=self.prediction_log_max_mb, promotion_file=self.promotion_file,
            events_dir=self.events_dir, artifacts_url=self.artifacts_url,
            model_poll_interval_s=self.model_poll_interval_s, query_strategy=self.query_strategy,
            label_studio=self.label_studio,
            capture=CaptureSettings(
                min_confidence=self.capture_min_confidence, max_confidence=self.capture_max_confidence,
                sample_rate=self.capture_sample_rate, drift_sample_rate=self.capture_drift_sample_rate,
                max_per_hour=self.capture_max_per_hour, max_per_day=self.capture_max_per_day,
                max_pending=self.capture_max_pending, queue_size=self.capture_queue_size,
            ) if self.capture_enabled else None,
            capture_dir=self.capture_dir,
            drift=DriftSettings(
                window=self.drift_window, min_samples=min(self.drift_min_samples, self.drift_window),
                check_every=self.drift_check_every, p_value=self.drift_p_value, components=self.drift_components,
            ) if self.drift_enabled else None,
        )

    @property
    def kubernetes(self) -> KubernetesSettings:
        return KubernetesSettings(
            namespace=self.k8s_namespace, api_url=self.k8s_api_url, job_template=self.k8s_job_template,
            training_image=self.k8s_training_image, git_source=self.k8s_git_source, gpus=self.k8s_gpus,
            artifacts_url=self.artifacts_url, training_timeout_s=self.training_timeout_s,
            keras_backend=self.keras_backend,
        )

    def child_env(self) -> dict[str, str]:
        """Environment for processes labelloop spawns (pipeline, service): the same
        settings, passed on as LABELLOOP_* variables, plus the BentoML model store."""
        env = dict(os.environ)
        for name, value in self.model_dump().items():
            if value is None:
                env.pop(f"LABELLOOP_{name.upper()}", None)
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"LABELLOOP_{name.upper()}"] = str(value)
        env["BENTOML_HOME"] = str(self.bentoml_home)
        env.setdefault("KERAS_BACKEND", "tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.setdefault("BENTOML_DO_NOT_TRACK", "true")
        return env
