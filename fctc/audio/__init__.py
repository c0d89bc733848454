"""Audio: the filterbank front end, waveform and feature augmentation, as pure functions.

* ``frontend.py``: :func:`filterbank` (thunder-speech's ``FilterbankFeatures`` as a
  :class:`~fctc.nn.core.Model`, with zero or thunder's reflect STFT padding) and its steps
  :func:`dither`, :func:`preemphasis`, :func:`power_spectrum`, :func:`mel_scale`, :func:`log`,
  :func:`normalise`, :func:`feature_lengths` (the module's notes say what padding can change);
* ``mel.py``: Slaney's mel scale (:func:`hz_to_mel`, :func:`mel_to_hz`) and
  :func:`mel_filterbank`;
* ``waveform.py``: padded waveform batches: :func:`check_audio`, :func:`zero_padding`,
  :func:`valid_power`, :func:`fft_convolve`;
* keyed augmentation of padded waveform batches ``(B, T)``: ``speed.py``
  (:func:`speed_perturb`, :func:`change_speed`), ``noise.py`` (:func:`add_noise`,
  :func:`colored_noise`, :func:`babble`, :func:`mix_at_snr`), ``reverb.py``
  (:func:`reverberate`, :func:`synthetic_rir`, :func:`schroeder_rt60`), ``filters.py``
  (:func:`band_limit`, :func:`band_filter`, :func:`lowpass_taps`, :func:`random_gain`) and
  their training-time chain ``waveform_augment.py`` (:func:`augment_waveform`);
* ``feature_augment.py``: keyed augmentation of padded feature batches: :func:`spec_augment`,
  :func:`random_warp` and their training-time chain :func:`augment_features`.
"""

from .feature_augment import augment_features as augment_features
from .feature_augment import random_warp as random_warp
from .feature_augment import spec_augment as spec_augment
from .filters import band_filter as band_filter
from .filters import band_limit as band_limit
from .filters import lowpass_taps as lowpass_taps
from .filters import random_gain as random_gain
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
from .noise import NOISE_COLORS as NOISE_COLORS
from .noise import NOISE_KINDS as NOISE_KINDS
from .noise import add_noise as add_noise
from .noise import babble as babble
from .noise import colored_noise as colored_noise
from .noise import mix_at_snr as mix_at_snr
from .reverb import reverberate as reverberate
from .reverb import schroeder_rt60 as schroeder_rt60
from .reverb import synthetic_rir as synthetic_rir
from .speed import change_speed as change_speed
from .speed import speed_lengths as speed_lengths
from .speed import speed_perturb as speed_perturb
from .waveform import check_audio as check_audio
from .waveform import fft_convolve as fft_convolve
from .waveform import valid_power as valid_power
from .waveform import zero_padding as zero_padding
from .waveform_augment import WAVEFORM_AUGMENTATIONS as WAVEFORM_AUGMENTATIONS
from .waveform_augment import augment_waveform as augment_waveform
