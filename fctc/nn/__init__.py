"""Pure layers: each is a :class:`Model` ``(init, apply)`` over parameter pytrees.

Parameter paths equal the ``state_dict`` keys of the matching ``torch.nn`` module, and
thunder-speech's shared blocks are exported here with thunder's semantics and signatures.
Every name below is re-exported explicitly from the module that defines it.
"""

from .activations import (
    relu as relu,
    gelu as gelu,
    tanh as tanh,
    sigmoid as sigmoid,
    silu as silu,
    hardtanh as hardtanh,
    leaky_relu as leaky_relu,
    elu as elu,
    identity as identity,
    activation as activation,
)
from .blocks import (
    lengths_to_mask as lengths_to_mask,
    normalize_tensor as normalize_tensor,
    get_same_padding as get_same_padding,
    convolution_stft as convolution_stft,
)
from .combinators import (
    serial as serial,
    sequential as sequential,
    masked as masked,
)
from .conv import (
    conv1d as conv1d,
)
from .core import (
    Model as Model,
    deterministic as deterministic,
    uses_key as uses_key,
    check_rank as check_rank,
    check_lengths as check_lengths,
    length_bounds as length_bounds,
    lengths_follow as lengths_follow,
    check_params as check_params,
)
from .decoders import (
    swap_last_dimension as swap_last_dimension,
    linear_decoder as linear_decoder,
    conv1d_decoder as conv1d_decoder,
)
from .dropout import (
    dropout as dropout,
)
from .init import (
    Initializer as Initializer,
    compute_fans as compute_fans,
    calculate_gain as calculate_gain,
    uniform as uniform,
    normal as normal,
    constant as constant,
    zeros as zeros,
    ones as ones,
    kaiming_uniform as kaiming_uniform,
    kaiming_normal as kaiming_normal,
    xavier_uniform as xavier_uniform,
    xavier_normal as xavier_normal,
    bias_uniform as bias_uniform,
)
from .linear import (
    linear as linear,
)
from .norm import (
    batch_norm as batch_norm,
    layer_norm as layer_norm,
)
