"""Pure layers: each is a :class:`Model` ``(init, apply)`` over parameter pytrees.

Parameter paths equal the ``state_dict`` keys of the matching ``torch.nn`` module, and
thunder-speech's shared blocks are exported here with thunder's semantics and signatures.
"""

from .activations import *  # noqa: F401,F403
from .blocks import *  # noqa: F401,F403
from .combinators import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .core import *  # noqa: F401,F403
from .decoders import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .init import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
