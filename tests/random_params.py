"""Random params of a model's shapes, drawn with numpy: compiling model.init is slow on CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def random_params(model: nn.Module, seed: int) -> dict:
    """Params shaped like ``model.init``'s: ones for norm scales, N(0, 1/fan_in) otherwise."""
    shape = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    abstract = jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t, t, t), shape)
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if len(leaf.shape) < 2:  # norm scales
            return jnp.ones(leaf.shape, jnp.float32)
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0]), jnp.float32)

    return jax.tree_util.tree_map(draw, nn.unbox(abstract["params"]))
