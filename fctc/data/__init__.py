"""The data pipeline: NeMo manifests, audio loading, a bad-data policy, bucketing, collation.

A corpus is one or more NeMo-style JSONL manifests, one utterance per line::

    {"audio_filepath": "clips/0001.flac", "duration": 1.52, "text": "turn on the lights"}

The pieces, from manifest to training batch (one file each)::

    utts = read_manifest("train.jsonl")                   # manifest.py: list[Utterance]
    ds = SpeechDataset(utts, vocabulary, max_labels=output_frames_fn(160, 2))  # dataset.py
    plan = bucket_batches(ds.durations, max_batch_seconds=60, seed=0, epoch=epoch)  # bucketing.py
    for batch in make_loader(ds, plan, num_workers=2):    # loader.py: fctc.data.Batch
        state, metrics = train_step(state, batch)

``audio_io.py`` decodes and resamples audio (:func:`load_audio`), ``frames.py`` says how many
CTC output frames a transcript needs and a model gives, ``batch.py`` holds :class:`Batch` and
the one :func:`collate`, and ``feature_cache.py`` serves precomputed front-end features
(:class:`FeatureCache`). The bad-data policy (``on_error``, :data:`SKIP_REASONS`) is
described in :mod:`fctc.data.dataset`.
"""

from ..corpus import bundled_manifests as bundled_manifests
from .audio_io import AudioError as AudioError
from .audio_io import load_audio as load_audio
from .batch import Batch as Batch
from .batch import Skipped as Skipped
from .batch import collate as collate
from .bucketing import bucket_batches as bucket_batches
from .dataset import SKIP_REASONS as SKIP_REASONS
from .dataset import DataError as DataError
from .dataset import SpeechDataset as SpeechDataset
from .dataset import skip_summary as skip_summary
from .feature_cache import FeatureCache as FeatureCache
from .frames import ctc_frames_needed as ctc_frames_needed
from .frames import output_frames_fn as output_frames_fn
from .loader import Loader as Loader
from .loader import make_loader as make_loader
from .manifest import ManifestError as ManifestError
from .manifest import Utterance as Utterance
from .manifest import read_manifest as read_manifest
