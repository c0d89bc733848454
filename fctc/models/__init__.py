"""Speech recognition models as pure :class:`~fctc.nn.core.Model` s.

Encoders follow thunder-speech's module trees, so their parameter paths are thunder's
``state_dict`` keys: :func:`quartznet_encoder` (``quartznet.py``) and
:func:`citrinet_encoder` (``citrinet.py``), with :func:`quartznet_config` /
:func:`citrinet_config` naming the usual sizes. :func:`ctc_model` (``ctc.py``) composes a
front end, an encoder and a decoder into thunder's complete CTC model; ``front_end.py`` holds
the front ends it is trained with (augmented, or over cached features).
``architectures.py`` describes each architecture once (:class:`Architecture`: encoder,
sizes, front end, decoder width, output stride) and builds the usual models
(:func:`quartznet_ctc`, :func:`citrinet_ctc`).
"""

from .architectures import ARCHITECTURES as ARCHITECTURES
from .architectures import CITRINET as CITRINET
from .architectures import QUARTZNET as QUARTZNET
from .architectures import Architecture as Architecture
from .architectures import architecture as architecture
from .architectures import citrinet_ctc as citrinet_ctc
from .architectures import quartznet_ctc as quartznet_ctc
from .citrinet import CITRINET_CONFIGS as CITRINET_CONFIGS
from .citrinet import citrinet_config as citrinet_config
from .citrinet import citrinet_encoder as citrinet_encoder
from .citrinet import squeeze_excite as squeeze_excite
from .ctc import CTC_PARTS as CTC_PARTS
from .ctc import ctc_model as ctc_model
from .front_end import augmented_front_end as augmented_front_end
from .front_end import cached_front_end as cached_front_end
from .front_end import identity_front_end as identity_front_end
from .quartznet import QUARTZNET_CONFIGS as QUARTZNET_CONFIGS
from .quartznet import STEM_STRIDE as STEM_STRIDE
from .quartznet import conv_block as conv_block
from .quartznet import masked_conv1d as masked_conv1d
from .quartznet import quartznet_config as quartznet_config
from .quartznet import quartznet_encoder as quartznet_encoder
