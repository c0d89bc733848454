"""Audio: the filterbank front end and feature augmentation, as pure functions.

* ``frontend.py``: :func:`filterbank` (thunder-speech's ``FilterbankFeatures`` as a
  :class:`~fctc.nn.core.Model`) and its steps :func:`dither`, :func:`preemphasis`,
  :func:`power_spectrum`, :func:`mel_scale`, :func:`log`, :func:`normalise`,
  :func:`feature_lengths` (the module's notes say what padding can change);
* ``mel.py``: Slaney's mel scale (:func:`hz_to_mel`, :func:`mel_to_hz`) and
  :func:`mel_filterbank`;
* ``feature_augment.py``: keyed augmentation of padded feature batches: :func:`spec_augment`,
  :func:`random_warp` and their training-time chain :func:`augment_features`.
"""

from .feature_augment import augment_features as augment_features
from .feature_augment import random_warp as random_warp
from .feature_augment import spec_augment as spec_augment
from .frontend import DIV_GUARD as DIV_GUARD
from .frontend import LOG_GUARD as LOG_GUARD
from .frontend import PAD_MODES as PAD_MODES
from .frontend import dither as dither
from .frontend import feature_lengths as feature_lengths
from .frontend import filterbank as filterbank
from .frontend import log as log
from .frontend import mel_scale as mel_scale
from .frontend import normalise as normalise
from .frontend import power_spectrum as power_spectrum
from .frontend import preemphasis as preemphasis
from .mel import hz_to_mel as hz_to_mel
from .mel import mel_filterbank as mel_filterbank
from .mel import mel_to_hz as mel_to_hz
