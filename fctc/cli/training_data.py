"""The data of a ``fctc train`` run: its splits, the batch plan of every epoch, the batches.

The plan of epoch ``e`` is a function of ``(seed, e)`` (:func:`fctc.data.bucket_batches`), so
the run's length in epochs is known up front (the sum of the epochs' plans, which differ in
length when batches are bounded by seconds) and a position ``(epoch, batch)`` resumes exactly.
A training split with nothing left to train on stops the run at once, naming the manifest and
how many utterances were skipped for which reason, instead of looping over empty epochs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import data as _data
from .. import tree as _tree
from ..text import Vocabulary
from .errors import ConfigError, RunError
from .recipe import build_feature_cache, build_vocabulary, output_frames

__all__ = ["TrainingData", "manifest_path"]


def manifest_path(value: Any, split: str) -> Path | None:
    """The manifest file of ``data.<split>``: a path, ``"bundled"`` (fctc's corpus) or None.

    Args:
        value: the config value.
        split: ``"train"``, ``"validation"`` or ``"test"``.

    Returns:
        The manifest, or None when the split is switched off.

    Raises:
        ConfigError: the file does not exist.
    """
    if value is None:
        return None
    if value == "bundled":
        return Path(_data.bundled_manifests()[split])
    path = Path(value)
    if not path.is_file():
        what = "is a folder, not a manifest file" if path.is_dir() else "does not exist"
        raise ConfigError(f"data.{split}: manifest {path} {what}; fix the path in the config")
    return path


def nothing_usable(split: str, manifest: Path | None, dataset: _data.SpeechDataset) -> RunError:
    """The error of a split none of whose utterances can be used.

    Args:
        split: the split's name (``"train"``, ...).
        manifest: its manifest.
        dataset: its dataset (its skip counts go into the message).

    Returns:
        A :class:`fctc.cli.errors.RunError` naming the manifest and the skip counts.
    """
    return RunError(
        f"data.{split}: no usable utterance in {manifest} ({dataset.skipped_summary()}); fix "
        "the files or the manifest (the warnings above name the first of each kind)"
    )


class TrainingData:
    """The splits of a run and the batches of its epochs.

    Args:
        config: the run's configuration (``data``, ``seed``, ``model`` for the frame rate).
        vocabulary: the run's vocabulary; None derives it from the training transcripts
            (``vocabulary`` section).

    Raises:
        ConfigError: a manifest that does not exist.
        RunError: a split whose utterances were all skipped (missing, unreadable, ...).
    """

    def __init__(self, config: dict[str, Any], vocabulary: Vocabulary | None = None):
        d = config["data"]
        self.config = config
        self.sample_rate = int(d["sample_rate"])
        self.train_path = manifest_path(d["train"], "train")
        self.train_utts = self.read(self.train_path)
        self.vocabulary = vocabulary or build_vocabulary(config, [u.text for u in self.train_utts])
        self.max_labels = output_frames(config["model"])
        self.train_set = self.dataset(self.train_utts)
        if not len(self.train_set):
            raise nothing_usable("train", self.train_path, self.train_set)
        self.val_path = manifest_path(d["validation"], "validation")
        self.val_set = self.dataset(self.read(self.val_path)) if self.val_path else None
        if self.val_set is not None and not len(self.val_set):
            raise nothing_usable("validation", self.val_path, self.val_set)
        self.test_path = manifest_path(d["test"], "test")
        self.cache: _data.FeatureCache | None = None
        self._plans: dict[int, list[list[int]]] = {}

    def read(self, path: Path) -> list[_data.Utterance]:
        """The utterances of a manifest, the first ``data.limit`` of them.

        Args:
            path: the manifest.

        Returns:
            Its utterances.

        Raises:
            RunError: the manifest holds none.
        """
        utts = _data.read_manifest(path)
        limit = self.config["data"]["limit"]
        if limit is not None:
            utts = utts[: int(limit)]
        if not utts:
            raise RunError(f"manifest {path} holds no utterances; give one that does")
        return utts

    def dataset(self, utterances: list[_data.Utterance], vocabulary: Vocabulary | None = None):
        """A :class:`fctc.data.SpeechDataset` with the run's bad-data policy and frame rate.

        Args:
            utterances: its utterances.
            vocabulary: its vocabulary (default: the run's).

        Returns:
            The dataset.
        """
        return _data.SpeechDataset(
            utterances, vocabulary or self.vocabulary, sample_rate=self.sample_rate,
            on_error=self.config["data"]["on_error"], max_labels=self.max_labels,
        )

    def batching(self) -> dict[str, Any]:
        """``batch_size`` and ``max_batch_seconds`` of the config, for the batch planners.

        Returns:
            Their keyword arguments.
        """
        d = self.config["data"]
        return {"batch_size": d["batch_size"], "max_batch_seconds": d["max_batch_seconds"]}

    def plan(self, epoch: int) -> list[list[int]]:
        """The batches of an epoch, as lists of training-set indices.

        Args:
            epoch: the epoch (0-based).

        Returns:
            Its plan (the same for the same seed and epoch).
        """
        if epoch not in self._plans:
            if len(self._plans) > 4:
                self._plans.pop(min(self._plans))
            self._plans[epoch] = _data.bucket_batches(
                self.train_set.durations, shuffle=True, seed=int(self.config["seed"]),
                epoch=epoch, **self.batching(),
            )
        return self._plans[epoch]

    def planned_steps(self, epochs: int) -> int:
        """The batches of the first ``epochs`` epochs' plans.

        Args:
            epochs: the number of epochs.

        Returns:
            Their total.
        """
        return sum(len(self.plan(e)) for e in range(epochs))

    def cache_features(self, model_config: dict[str, Any], front_state: Any) -> None:
        """Compute every training utterance's features once (``data.cache_features``), with
        the waveform-augmented copies of ``model.waveform.cached_copies``.

        Args:
            model_config: the ``model`` section (its front end).
            front_state: the front end's state (on any device; copied to the CPU).

        Raises:
            RunError: no utterance could be decoded.
        """
        front_state = _tree.map(lambda x: x.cpu(), front_state)
        self.cache = build_feature_cache(model_config, self.train_set, front_state, int(self.config["seed"]))
        if all(f is None for f in self.cache.features):
            raise nothing_usable("train", self.train_path, self.train_set)

    def batches(self, epoch: int, start: int) -> Iterator[tuple[_data.Batch, int]]:
        """``(batch, position)`` pairs of an epoch's plan from batch ``start`` on.

        Args:
            epoch: the epoch.
            start: the first batch of its plan.

        Yields:
            Each batch with at least one loadable utterance, and the index of the next batch.
        """
        plan = self.plan(epoch)
        if self.cache is not None:
            yield from self.cache.iterate(plan, start, epoch)
            return
        loader = _data.make_loader(
            self.train_set, plan, num_workers=int(self.config["data"]["num_workers"]),
            start_batch=start,
        )
        for batch in loader:
            yield batch, loader.position

    def no_batches_error(self) -> RunError:
        """The error of an epoch none of whose batches could be loaded.

        Returns:
            A :class:`fctc.cli.errors.RunError` naming the manifest and the skip counts.
        """
        return nothing_usable("train", self.train_path, self.train_set)
