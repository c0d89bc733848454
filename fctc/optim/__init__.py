"""optax-compatible gradient transformations on torch tensors.

Names, arguments and numerics follow optax; states are NamedTuples of tensors; hot paths run
``torch._foreach_*`` over the flattened leaves.
"""

from .aliases import *  # noqa: F401,F403
from .base import *  # noqa: F401,F403
from .clipping import *  # noqa: F401,F403
from .loss_scale import *  # noqa: F401,F403
from .schedules import *  # noqa: F401,F403
from .transforms import *  # noqa: F401,F403
from .wrappers import *  # noqa: F401,F403
