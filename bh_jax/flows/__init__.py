"""The flow prior: one distrax bijector per module, assembled in `model.py`.

Shapes follow JAX convention: images are [..., H, W, C] with event_ndims 3.
"""

from bh_jax.flows.actnorm import ActNorm, init_actnorm
from bh_jax.flows.conv1x1 import Conv1x1, init_conv1x1
from bh_jax.flows.coupling import Conditioner, coupling, init_coupling
from bh_jax.flows.model import FlowModel
from bh_jax.flows.multiscale import FactorOut
from bh_jax.flows.squeeze import Squeeze

__all__ = ["ActNorm", "Conditioner", "Conv1x1", "FactorOut", "FlowModel", "Squeeze",
           "coupling", "init_actnorm", "init_conv1x1", "init_coupling"]
