"""Speech recognition models as pure :class:`~fctc.nn.core.Model` s.

Encoders follow thunder-speech's module trees, so their parameter paths are thunder's
``state_dict`` keys: :func:`quartznet_encoder` and :func:`citrinet_encoder`, with
:func:`quartznet_config` / :func:`citrinet_config` naming the usual sizes. :func:`ctc_model`
composes a front end, an encoder and a decoder into thunder's complete CTC model
(:func:`quartznet_ctc` and :func:`citrinet_ctc` build the usual ones).
"""

from .citrinet import *  # noqa: F401,F403
from .ctc import *  # noqa: F401,F403
from .quartznet import *  # noqa: F401,F403
