"""Which trained model is active: recorded in the database, so every worker on every host agrees.

Artifacts live on disk under ``classifier.models_dir/<version>/``; the database holds one row per
version and marks one active. The worker asks at the start of each poll and loads a new version
when it changes, so activating a model needs no restart.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from classifiers.base import ModelError
from classifiers.model import Classifier
from triage.errors import NoActiveModel
from triage.store.database import Database
from triage.store.schema import ModelActivation, ModelVersion, utcnow

log = logging.getLogger(__name__)


class ModelRegistry:
    """The versions known to the database, and the active one."""

    def __init__(self, db: Database, models_dir: Path) -> None:
        self.db = db
        self.models_dir = models_dir

    def register(self, classifier: Classifier, path: Path, *, activate: bool) -> None:
        """Record a freshly saved version (copied into models_dir if saved elsewhere)."""
        local = self.models_dir / classifier.version
        if path.resolve() != local.resolve():
            _copy_into(path, local)
        with self.db.transaction() as session:
            session.merge(
                ModelVersion(
                    version=classifier.version,
                    path=str(local),
                    details=_details(classifier.metadata),
                )
            )
        if activate:
            self.activate(classifier.version)

    def activate(self, version: str, *, by: str = "", reason: str = "") -> None:
        """Make ``version`` the one every worker uses, and record the activation.

        A version folder in models_dir that this database does not know yet (trained against
        another database, copied from another host) is registered first.

        Raises:
            NoActiveModel: the version is unknown or its artifact does not load.
        """
        self._register_from_disk(version)
        with self.db.transaction() as session:
            row = session.get(ModelVersion, version)
            if row is None:
                raise NoActiveModel(f"no model version {version!r}; see `triage models list`")
            self._load(row.version)  # refuse to activate what cannot be loaded
            session.execute(update(ModelVersion).values(active=False))
            row.active, row.activated_at = True, utcnow()
            session.add(ModelActivation(version=version, activated_by=by, reason=reason))

    def rollback(self) -> tuple[str, str]:
        """Re-activate the version that was active before the current one.

        Activations not rolled back form a stack whose top is the active version; this marks
        the top (and activations of the same version right below it) rolled back, so a second
        rollback steps further back instead of toggling between two versions.

        Returns:
            (the version left, the version now active).

        Raises:
            NoActiveModel: nothing is active, there is no earlier activation, or the earlier
                version does not load (then nothing changes).
        """
        with self.db.transaction() as session:
            current = session.scalars(select(ModelVersion).where(ModelVersion.active)).first()
            if current is None:
                raise NoActiveModel("no model is active, so there is nothing to roll back")
            stack = list(
                session.scalars(
                    select(ModelActivation)
                    .where(ModelActivation.rolled_back_at.is_(None))
                    .order_by(ModelActivation.id.desc())
                )
            )
            now = utcnow()
            top = 0
            while top < len(stack) and stack[top].version == current.version:
                stack[top].rolled_back_at = now
                top += 1
            if top == len(stack):
                raise NoActiveModel(
                    f"model {current.version} has no earlier activation to roll back to; "
                    "see `triage models list`"
                )
            previous = session.get(ModelVersion, stack[top].version)
            assert previous is not None  # a foreign key
            self._load(previous.version)  # raises before anything is committed
            session.execute(update(ModelVersion).values(active=False))
            previous.active, previous.activated_at = True, now
            log.info("rolled back from model %s to %s", current.version, previous.version)
            return current.version, previous.version

    def versions(self) -> list[ModelVersion]:
        with self.db.session() as session:
            return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at)))

    def active(self) -> ModelVersion | None:
        with self.db.session() as session:
            return session.scalars(select(ModelVersion).where(ModelVersion.active)).first()

    def _register_from_disk(self, version: str) -> None:
        """Record ``version`` if its folder is in models_dir and this database lacks it."""
        if version in {"", ".", ".."} or Path(version).name != version:
            return  # not a folder name: never look outside models_dir
        if not (self.models_dir / version).is_dir():
            return
        with self.db.session() as session:
            if session.get(ModelVersion, version) is not None:
                return
        classifier = self._load(version)
        if classifier.version != version:
            raise NoActiveModel(
                f"the folder {self.models_dir / version} holds model {classifier.version}, "
                "not a version of its own name"
            )
        self.register(classifier, self.models_dir / version, activate=False)

    def _load(self, version: str) -> Classifier:
        """The artifact of ``version``, from the configured models_dir only: joblib files are
        pickles, and unpickling runs code."""
        path = self.models_dir / version
        for item in [path, *path.glob("*")] if path.exists() else []:
            if item.stat().st_mode & stat.S_IWOTH:
                raise NoActiveModel(
                    f"refusing to load model {version}: {item} is writable by others "
                    f"(run chmod o-w {item})"
                )
        try:
            return Classifier.load(path)
        except ModelError as exc:
            raise NoActiveModel(f"model {version} cannot be used: {exc}") from None

    def load_active(self) -> Classifier:
        """The active classifier.

        Raises:
            NoActiveModel: none is active, or its artifact is missing, tampered or incompatible.
        """
        row = self.active()
        if row is None:
            raise NoActiveModel(
                "no model is active; train one with `triage train --data FILE ... --activate`"
            )
        return self._load(row.version)


class ActiveClassifier:
    """Caches the loaded active model and reloads it when another version is activated."""

    def __init__(
        self, registry: ModelRegistry, on_problem: Callable[[str], None] | None = None
    ) -> None:
        self.registry = registry
        self.on_problem = on_problem
        self._classifier: Classifier | None = None
        self._problem: str | None = None

    @property
    def path(self) -> Path | None:
        """The artifact folder of the loaded model (worker processes load it from there)."""
        if self._classifier is None:
            return None
        return self.registry.models_dir / self._classifier.version

    def current(self) -> Classifier | None:
        """The active classifier, or None (messages then go to review) with the reason logged once."""
        row = self.registry.active()
        if (
            self._classifier is not None
            and row is not None
            and row.version == self._classifier.version
        ):
            return self._classifier
        try:
            self._classifier = self.registry.load_active()
        except NoActiveModel as exc:
            self._classifier = None
            if str(exc) != self._problem:
                problem = (
                    f"{str(exc).rstrip('.')}; messages are stored and sent to review meanwhile"
                )
                log.error("%s", problem)
                self._problem = str(exc)
                if self.on_problem is not None:
                    self.on_problem(f"{problem}.")
            return None
        if self._problem:
            log.info("model %s is active again", self._classifier.version)
        self._problem = None
        return self._classifier


def _details(metadata: dict[str, Any]) -> dict[str, Any]:
    keys = ("created_at", "n_samples", "data_fingerprint", "source", "axes", "metrics")
    return {key: metadata[key] for key in keys if key in metadata}


def _copy_into(source: Path, target: Path) -> None:
    """Copy an artifact folder into place atomically (a temp name, then one rename)."""
    temp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, temp)
    if target.exists():
        shutil.rmtree(temp)
        return
    os.replace(temp, target)
