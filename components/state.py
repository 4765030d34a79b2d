"""Where Ratchet keeps its state, and the environment the embedded defaults need.

A project holds one or more models. The default model's ``params.yaml`` and ``dvc.yaml``
sit at the project root; every further model has its own folder ``pipelines/<name>/``
with its own ``params.yaml``, ``dvc.yaml``, ``dvc.lock``, ``data/``, ``models/`` and
``metrics/`` (docs/models.md). :class:`ProjectPaths` tells the model's folder (data,
models, metrics, params) from the project root (state, configs, code).

All models share one state folder (``.ratchet/`` beside the root ``params.yaml``, or
``$RATCHET_HOME``), which holds the embedded defaults: the MLflow SQLite store and
artifacts, Prefect's home, BentoML's home, the local DVC remote, checkpoints and run
reports (each model's own in ``pipelines/<name>/`` there). Pointing at real services is
configuration only: ``MLFLOW_TRACKING_URI`` / ``tracking.mlflow_uri``,
``PREFECT_API_URL`` / ``tracking.prefect_api_url`` and ``tracking.dvc_remote_url``.

Nothing here runs at import; the CLI and the flows call :func:`configure_environment`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from components.config import DEFAULT_PARAMS_FILE, RatchetConfig

STATE_DIR_NAME = ".ratchet"
# A project's further models live in <project root>/pipelines/<name>/.
MODELS_DIR_NAME = "pipelines"
# The name of the model whose params.yaml is the project root's.
DEFAULT_MODEL = "default"

# Telemetry and update checks off: the default path must work offline and quietly.
QUIET_ENVIRONMENT = {
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "GX_ANALYTICS_ENABLED": "false",
    # Prefect's ephemeral API starts a server per run; on a busy 2-core machine the default
    # 20 s start-up budget is not always enough.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


@dataclass(frozen=True)
class ProjectPaths:
    """Every path a run reads or writes, derived from the project root, the state folder
    and the model's folder.

    Attributes:
        project_root: the project (its ``.dvc/``, ``configs/``, ``components/``).
        state_dir: the state folder every model of the project shares.
        model_folder: ``pipelines/<name>/`` for a further model; None for the default
            model, whose folder is the project root.
    """

    project_root: Path
    state_dir: Path
    model_folder: Path | None = None

    @classmethod
    def discover(cls, folder: str | Path | None = None) -> ProjectPaths:
        """The paths of the model whose ``params.yaml`` is in ``folder`` (default: cwd).

        A folder ``<root>/pipelines/<name>/`` whose ``<root>`` has a ``params.yaml`` or a
        ``.dvc/`` is a further model of the project at ``<root>``; any other folder is
        a project root (its default model).
        """
        start = Path(folder or Path.cwd()).resolve()
        root, model_folder = project_of(start)
        state = Path(os.environ.get("RATCHET_HOME") or root / STATE_DIR_NAME).resolve()
        return cls(project_root=root, state_dir=state, model_folder=model_folder)

    # The model's own folder and its name.
    @property
    def model_root(self) -> Path:
        """The folder of the model's ``params.yaml``, ``dvc.yaml``, data, models, metrics."""
        return self.model_folder or self.project_root

    @property
    def model_name(self) -> str:
        """``default`` for the project root's model, else its folder's name."""
        return DEFAULT_MODEL if self.model_folder is None else self.model_folder.name

    @property
    def params_in_project(self) -> str:
        """The model's params.yaml relative to the project root, e.g.
        ``pipelines/conll/params.yaml`` (what a deployment's ``params`` parameter takes)."""
        return (self.model_root / DEFAULT_PARAMS_FILE).relative_to(self.project_root).as_posix()

    @property
    def model_state_dir(self) -> Path:
        """The part of the state folder that is this model's alone (run reports, Data
        Docs, the inference log, feedback): the state folder itself for the default
        model, ``pipelines/<name>/`` in it for the others."""
        if self.model_folder is None:
            return self.state_dir
        return self.state_dir / MODELS_DIR_NAME / self.model_folder.name

    # Data, DVC-tracked inside the model's folder.
    @property
    def raw_dir(self) -> Path:
        return self.model_root / "data" / "raw"

    @property
    def prepared_dir(self) -> Path:
        return self.model_root / "data" / "prepared"

    @property
    def models_dir(self) -> Path:
        """Pretrained and fine-tuned model folders: DVC stage outputs, ignored by git."""
        return self.model_root / "models"

    @property
    def pretrained_dir(self) -> Path:
        """The pretrain stage's output, the model fine-tuning starts from."""
        return self.models_dir / "pretrained"

    @property
    def finetuned_dir(self) -> Path:
        """The train stage's output, the candidate that evaluation and the gate judge."""
        return self.models_dir / "finetuned"

    @property
    def metrics_dir(self) -> Path:
        """Small JSON metrics files that DVC stages declare as metrics."""
        return self.model_root / "metrics"

    # Run outputs, inside the state folder.
    @property
    def mlflow_db(self) -> Path:
        return self.state_dir / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.state_dir / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    @property
    def bentoml_home(self) -> Path:
        return self.state_dir / "bentoml"

    @property
    def dvc_remote(self) -> Path:
        return self.state_dir / "dvc-remote"

    @property
    def checkpoints_dir(self) -> Path:
        return self.state_dir / "checkpoints"

    @property
    def artifacts_dir(self) -> Path:
        """Step outputs by cache key (model folders): reused by reruns, never the record."""
        return self.state_dir / "artifacts"

    @property
    def evaluations_dir(self) -> Path:
        return self.state_dir / "evaluations"

    @property
    def reports_dir(self) -> Path:
        return self.model_state_dir / "reports"

    @property
    def data_docs_dir(self) -> Path:
        return self.model_state_dir / "data-docs"

    def resolve(self, path: str | Path) -> Path:
        """A path to a project file (base model, behaviour suite, API key file) relative
        to the project root (absolute paths pass through)."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.project_root / candidate)

    def resolve_data(self, path: str | Path) -> Path:
        """A data path of the model's params (``data.source``, ``pretrain.extra_corpora``)
        relative to the model's folder, where DVC reads it (absolute paths pass through)."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.model_root / candidate)


def project_of(folder: Path) -> tuple[Path, Path | None]:
    """``(project root, model folder)`` of the params folder ``folder`` (resolved): a
    model folder is ``<root>/pipelines/<name>/`` in a project (a ``params.yaml`` or a
    ``.dvc/`` at ``<root>``); otherwise ``folder`` is the project root."""
    parent = folder.parent
    if parent.name == MODELS_DIR_NAME:
        root = parent.parent
        if (root / DEFAULT_PARAMS_FILE).is_file() or (root / ".dvc").is_dir():
            return root, folder
    return folder, None


def mlflow_tracking_uri(config: RatchetConfig, paths: ProjectPaths) -> str:
    """Environment beats config beats the embedded SQLite store."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or config.tracking.mlflow_uri
        or f"sqlite:///{paths.mlflow_db}"
    )


def dvc_remote_url(config: RatchetConfig, paths: ProjectPaths) -> str:
    return config.tracking.dvc_remote_url or str(paths.dvc_remote)


def configure_environment(config: RatchetConfig, paths: ProjectPaths) -> dict[str, str]:
    """Create the state folder and export the variables the embedded services read.

    Variables the user already set win, so real servers are chosen by environment alone.

    Returns:
        The variables that were set by this call.
    """
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    wanted = dict(QUIET_ENVIRONMENT)
    wanted["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri(config, paths)
    wanted["PREFECT_HOME"] = str(paths.prefect_home)
    wanted["BENTOML_HOME"] = str(paths.bentoml_home)
    if config.tracking.prefect_api_url:
        wanted["PREFECT_API_URL"] = config.tracking.prefect_api_url
    applied = {}
    for name, value in wanted.items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    return applied


TRASH_PREFIX = ".trash-"


def last_touched(folder: Path) -> float:
    """The newest modification time of a folder and its direct entries (a checkpoint
    folder gains entries while its run trains)."""
    times = [folder.stat().st_mtime]
    for entry in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):  # a running job replaced it
            times.append(entry.lstat().st_mtime)
    return max(times)


def prune_step_caches(
    paths: ProjectPaths, max_age_days: float, now: float | None = None
) -> list[Path]:
    """Delete the step caches (``artifacts/``, ``checkpoints/`` and ``evaluations/`` keyed
    folders) that nothing has written or reused for ``max_age_days``. The retrain flow
    calls this at the end of a run, after dating the caches it used.

    They only save recomputation: registered models live in the MLflow store and Bentos in
    BentoML's, and a flow whose cached folder is gone recomputes it. Without pruning,
    nightly retraining on new data adds a model folder a night, and checkpoints of runs
    that crashed and were never rerun stay for ever. Each folder is renamed away before
    it is deleted, so a crash mid-delete cannot leave a half-deleted cache that looks whole.

    Returns:
        The deleted folders.
    """
    cutoff = (time.time() if now is None else now) - max_age_days * 86_400
    removed: list[Path] = []
    for root in (paths.artifacts_dir, paths.checkpoints_dir, paths.evaluations_dir):
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or folder.is_symlink():
                continue
            if folder.name.startswith(TRASH_PREFIX):  # a delete that a crash interrupted
                shutil.rmtree(folder, ignore_errors=True)
                continue
            # Another process (a DVC stage, another registry's retrain) may be writing
            # or removing its own caches meanwhile: what vanished is skipped.
            with contextlib.suppress(FileNotFoundError):
                if last_touched(folder) < cutoff:
                    trash = folder.with_name(TRASH_PREFIX + folder.name)
                    shutil.rmtree(trash, ignore_errors=True)
                    os.replace(folder, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                    removed.append(folder)
    return removed
