"""Checkpoints on shared storage, so an elastic group that torchrun restarts resumes where it stopped.

Lightning writes ``last.ckpt`` into the run folder of the node that holds global rank 0; a node that
dies takes that folder with it, and the nodes of a restarted group may be other machines. So every save
of ``last.ckpt`` is also published to shared storage (:class:`SharedCheckpoints`: a local or network
folder, or any fsspec URL such as ``s3://bucket/checkpoints``), under the job's id, and each worker of a
(re)started group fetches it to its own disk before training and resumes from it.

Publishing is atomic: a local folder gets a temporary file renamed over the old one; an object store
replaces the object in one PUT. A reader therefore sees the previous checkpoint or the new one, never half
of one, even when a worker is killed while saving.

Example::

    shared = SharedCheckpoints("s3://bucket/ckpt", "job-42", settings.storage)
    start_from = shared.fetch(Path("/tmp/job-42-rank0.ckpt"))   # None on a first start
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from greekfire.core.errors import UnavailableError
from greekfire.data.storage import StorageLike, is_object_store, open_fs

log = logging.getLogger(__name__)

LAST = "last.ckpt"


class SharedCheckpoints:
    """The latest checkpoint of job ``job_id`` under ``url`` (``<url>/<job_id>/last.ckpt``)."""

    def __init__(self, url: str, job_id: str, storage: StorageLike = None) -> None:
        self.url = url.rstrip("/")
        self.job_id = job_id
        self.storage = storage
        self._fs: Any = None
        self._root = ""

    def _open(self) -> tuple[Any, str]:
        if self._fs is None:
            try:
                self._fs, root = open_fs(self.url, self.storage)
            except Exception as exc:  # noqa: BLE001 - any construction failure names the location
                raise UnavailableError(self.url, f"{type(exc).__name__}: {exc}") from exc
            self._root = f"{root.rstrip('/')}/{self.job_id}"
        return self._fs, self._root

    @property
    def location(self) -> str:
        """Where the latest checkpoint lives (``<url>/<job_id>/last.ckpt``)."""
        return f"{self.url}/{self.job_id}/{LAST}"

    def exists(self) -> bool:
        """True when a checkpoint has been published for this job."""
        fs, root = self._open()
        return bool(fs.exists(f"{root}/{LAST}"))

    def publish(self, local: Path) -> None:
        """Copy the local checkpoint file ``local`` to shared storage, replacing the previous one atomically."""
        fs, root = self._open()
        target = f"{root}/{LAST}"
        try:
            fs.makedirs(root, exist_ok=True)
            if is_object_store(fs):
                fs.put_file(str(local), target)  # one PUT: readers see the old object or the new one
            else:
                tmp = f"{root}/.{LAST}.{uuid.uuid4().hex}.tmp"
                fs.put_file(str(local), tmp)
                fs.mv(tmp, target)  # a rename within one folder: atomic on POSIX
        except OSError as exc:
            raise UnavailableError(self.location, f"{type(exc).__name__}: {exc}") from exc

    def fetch(self, local: Path) -> Path | None:
        """Download the latest checkpoint to ``local``; None when none was published yet."""
        fs, root = self._open()
        source = f"{root}/{LAST}"
        if not fs.exists(source):
            return None
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        try:
            fs.get_file(source, str(tmp))
        except OSError as exc:
            raise UnavailableError(self.location, f"{type(exc).__name__}: {exc}") from exc
        tmp.replace(local)
        return local


class SharedCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that also publishes every ``last.ckpt`` it writes to :class:`SharedCheckpoints`.

    Lightning calls it on global rank 0 only; other checkpoints (``best.ckpt``) stay in the run folder.
    Pass it to the Trainer's ``plugins`` (:func:`greekfire.ml.train.train_pricing` takes ``plugins``).
    """

    def __init__(self, shared: SharedCheckpoints) -> None:
        super().__init__()
        self.shared = shared
        self.published = 0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        if Path(str(path)).name == LAST:
            self.shared.publish(Path(str(path)))
            self.published += 1
            log.debug("published %s (step %s)", self.shared.location, checkpoint.get("global_step"))
