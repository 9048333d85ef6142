"""The training system around the Keras PtychoPINN network (SPEC §5).

A thin :class:`keras.Model` with Keras' custom ``train_step`` / ``test_step``: it
wraps the network from :mod:`ptyparity.backends.tensorflow.network`, computes one
loss in a shared :meth:`PtychoPINNSystem.model_step` and owns one Adam optimizer
(:class:`SpecAdam`, whose epsilon sits where torch's does).
The epoch loop, the plateau rule and the hooks live in
:func:`ptyparity.backends.tensorflow.api.fit`; the physics stays in ``ops`` and
``network``. This mirrors the torch backend's ``PtychoPINNModule``.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ptyparity.backends import contract  # noqa: E402
from ptyparity.backends.tensorflow import ops  # noqa: E402

__all__ = ["ADAM_BETAS", "ADAM_EPS", "SpecAdam", "PtychoPINNSystem", "make_optimizer"]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-7  # added to sqrt(v_hat), as torch does (see SpecAdam)


class SpecAdam(keras.optimizers.Adam):
    """Keras 3 Adam with ``epsilon`` added to the bias-corrected ``sqrt(v_hat)``.

    Keras' own :class:`keras.optimizers.Adam` folds the bias corrections into the
    step size and adds ``epsilon`` to the *uncorrected* ``sqrt(v)``, so its effective
    epsilon is ``eps / sqrt(1 - beta_2**t)`` (31.6 eps at step 1, 3.2 eps at step 100, 1.26 at
    step 1000). :class:`torch.optim.Adam` and Kingma & Ba's Algorithm 1 add ``eps`` to
    ``sqrt(v_hat)``. SPEC §5 fixes one Adam for both backends, so this class
    computes, per variable and with ``t`` the 1-based step,

    ``m <- m + (1 - beta_1) (g - m)``, ``v <- beta_2 v + (1 - beta_2) g g``,
    ``theta <- theta - (lr / (1 - beta_1**t)) m / (sqrt(v) / sqrt(1 - beta_2**t) + eps)``

    with the bias corrections in float64. The measured effect is in
    ``tests/backends/test_training_parity.py``.

    Parameters
    ----------
    fused : bool
        True (default): one ``ResourceApplyAdam`` kernel per variable (:meth:`_fused_update`),
        as the torch backend's ``Adam(fused=True)``: the traced train step has a quarter fewer
        ops (1727 -> 1315 at N=32 f=1), ~0.15 s less tracing per fit. False: the update as a
        dozen small ops in torch's order (:meth:`_composite_update`), the reference the fused
        one is tested against.

    References
    ----------
    D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
    arXiv:1412.6980.
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, *, fused=True, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         amsgrad=False, **kwargs)
        self.fused = fused

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # The bias corrections are the same for every variable of one step: built once per step
        # (per dtype and device) instead of once per variable, the traced train step has a sixth
        # fewer ops (2088 -> 1727 at f=1: ~0.15 s less tracing per fit) and computes the same values.
        self._step_scalars = {}
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step_scalars = None

    def _step_scalar(self, name, dtype, device, build):
        """``build()``, a scalar tensor of one step, made once per step per ``(name, dtype, device)``."""
        cache = getattr(self, "_step_scalars", None)
        key = (name, str(dtype), device)
        if cache is not None and key in cache:
            return cache[key]
        value = build()
        if cache is not None:
            cache[key] = value
        return value

    def _bias_corrections(self, learning_rate):
        """``(lr / (1 - beta_1**t), sqrt(1 - beta_2**t))`` as float64 tensors."""
        t = keras.ops.cast(self.iterations + 1, "float64")
        # convert_to_tensor with a dtype: keras.ops.cast(0.999, "float64") would round the
        # Python float through float32 first (sqrt(1 - beta_2**t) then off by 6e-6 at t=1).
        bias1 = 1.0 - keras.ops.power(keras.ops.convert_to_tensor(self.beta_1, "float64"), t)
        bias2 = 1.0 - keras.ops.power(keras.ops.convert_to_tensor(self.beta_2, "float64"), t)
        return keras.ops.cast(learning_rate, "float64") / bias1, keras.ops.sqrt(bias2)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        gradient = keras.ops.cast(gradient, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        (self._fused_update if self.fused else self._composite_update)(gradient, variable, m, v, learning_rate)

    def _composite_update(self, gradient, variable, m, v, learning_rate):
        dtype, device = variable.dtype, getattr(variable, "device", None)
        step_size, bias2_sqrt = self._step_scalar("composite", dtype, device, lambda: tuple(
            keras.ops.cast(x, dtype) for x in self._bias_corrections(learning_rate)))
        self.assign_add(m, (gradient - m) * (1 - self.beta_1))  # torch: m.lerp_(g, 1 - beta_1)
        self.assign(v, v * self.beta_2 + (1 - self.beta_2) * gradient * gradient)
        denom = keras.ops.sqrt(v) / bias2_sqrt + self.epsilon
        self.assign_sub(variable, step_size * m / denom)

    def _fused_update(self, gradient, variable, m, v, learning_rate):
        """The same update through TensorFlow's Adam kernel, which computes

        ``m += (g - m)(1 - b1)``, ``v += (g g - v)(1 - b2)``,
        ``theta -= alpha m / (sqrt(v) + e)``, ``alpha = lr sqrt(1 - b2_power) / (1 - b1_power)``,

        all in the variable's dtype. With ``b1_power = b2_power = 0`` it takes ``alpha`` and ``e``
        as given: ``alpha = (lr / (1 - beta_1**t)) sqrt(1 - beta_2**t)`` and
        ``e = eps sqrt(1 - beta_2**t)`` turn its step into the one above. One more difference is
        float32's: the kernel's ``1 - b2`` is ``1 - float32(0.999)``, 1.3e-5 below torch's
        ``float32(0.001)``, so its ``v`` is a constant ``k2`` times torch's and its steps are
        6.5e-6 off; its ``1 - b1`` is 2.2e-7 above ``float32(0.1)`` (``k1``). ``alpha * sqrt(k2) / k1``
        and ``e * sqrt(k2)`` take ``k2`` out exactly and ``k1`` from the newest gradient's share
        of ``m`` (its older shares decay by ``float32(0.9)``, 2.5e-8 from torch's ``1 - float32(0.1)``);
        both are 1 in float64. Measured against Algorithm 1 and the composite update in
        ``tests/backends/test_tf_fit.py``."""
        dtype, device = variable.dtype, getattr(variable, "device", None)

        def scalars():
            step_size, bias2_sqrt = self._bias_corrections(learning_rate)
            k1, k2 = (_kernel_coefficient_ratio(beta, dtype) for beta in (self.beta_1, self.beta_2))
            alpha = step_size * bias2_sqrt * (math.sqrt(k2) / k1)
            eps = bias2_sqrt * (self.epsilon * math.sqrt(k2))
            return (tf.constant(0, dtype), tf.constant(self.beta_1, dtype), tf.constant(self.beta_2, dtype),
                    keras.ops.cast(alpha, dtype), keras.ops.cast(eps, dtype))

        zero, beta_1, beta_2, alpha, eps = self._step_scalar("fused", dtype, device, scalars)
        tf.raw_ops.ResourceApplyAdam(var=_handle(variable), m=_handle(m), v=_handle(v), beta1_power=zero,
                                     beta2_power=zero, lr=alpha, beta1=beta_1, beta2=beta_2, epsilon=eps,
                                     grad=gradient, use_locking=False, use_nesterov=False)


def _kernel_coefficient_ratio(beta, dtype):
    """``(1 - dtype(beta)) / dtype(1 - beta)``: TensorFlow's Adam kernel's moment coefficient over
    torch's (``1 - beta`` rounded once to the parameter dtype), as a Python float."""
    cast = tf.as_dtype(dtype).as_numpy_dtype
    return float(cast(1) - cast(beta)) / float(cast(1 - beta))


def _handle(variable):
    """The resource handle of a Keras or TF variable."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def make_optimizer(learning_rate, precision="float32", *, fused=True):
    """The Adam of SPEC §5: lr from the config, betas 0.9/0.999, eps 1e-7 added to
    ``sqrt(v_hat)`` as in torch (:class:`SpecAdam`, ``fused`` as there).

    With ``precision="float64"`` the learning-rate variable is float64 too, so the
    rate is the config's Python float exactly, as torch uses it (a float32 variable
    would carry a 5e-8 relative error into every float64 step)."""
    saved = keras.config.floatx()
    keras.config.set_floatx(precision)  # Keras creates the rate variable in floatx
    try:
        return SpecAdam(learning_rate=learning_rate, beta_1=ADAM_BETAS[0], beta_2=ADAM_BETAS[1], epsilon=ADAM_EPS,
                        fused=fused)
    finally:
        keras.config.set_floatx(saved)


class PtychoPINNSystem(keras.Model):
    """Loss and optimizer around a PtychoPINN network.

    Parameters
    ----------
    net : PtychoPINN
        The Keras network; trained in place (its variables are this model's).
    loss_mode : {"poisson", "mae"}
        What is optimised. The Poisson deviance is computed in both modes and
        reported, never optimised in ``mae`` mode.
    learning_rate : float
        Initial Adam rate.

    Notes
    -----
    ``train_step`` and ``test_step`` take ``(scaled_diffraction, rel)`` or
    ``(scaled_diffraction, rel, share)``; ``share`` is this replica's fraction of the
    global batch under a multi-device strategy, so that the all-reduced (summed)
    gradients and reported values are those of the global batch mean.
    """

    def __init__(self, net, *, loss_mode: str, learning_rate: float):
        super().__init__(name="ptychopinn_system")
        self.net = net
        self.loss_mode = contract.check_loss_mode(loss_mode)
        self.compile(optimizer=make_optimizer(learning_rate, net.precision), jit_compile=False)
        self.optimizer.build(self.net.trainable_variables)  # slots now, not inside the first trace

    def call(self, inputs):
        return self.net(inputs)

    def model_step(self, batch):
        """Loss (differentiable) and Poisson deviance of one batch.

        Parameters
        ----------
        batch : (Tensor, Tensor)
            ``scaled_diffraction`` (b, N, N, C) in count units and ``rel`` (b, C, 2).

        Returns
        -------
        loss, deviance : Tensor, shape ()
            Means over all elements (SPEC §3); ``deviance`` carries no gradient.
        """
        scaled, rel = batch
        return self.losses(self.net((scaled, rel)), scaled)

    def losses(self, taps, scaled):
        """:meth:`model_step`'s loss and deviance from the network's ``taps`` of ``scaled``
        (also called eagerly, on the taps of the compiled forward pass: validation)."""
        log_scale, precision = self.net.log_scale, self.net.precision  # the losses in the network's precision
        if self.loss_mode == "poisson":
            loss = ops.poisson_loss(taps["pred_intensity"], scaled, log_scale, precision=precision)
        else:
            loss = ops.mae_loss(taps["pred_amplitude"], scaled, log_scale, precision=precision)
        deviance = tf.stop_gradient(ops.poisson_deviance(taps["pred_intensity"], scaled, log_scale,
                                                         precision=precision))
        return loss, deviance

    @staticmethod
    def _weighted(value, share):
        """``value * share`` (0 for an empty replica, whose mean is NaN)."""
        if share is None:
            return value
        return tf.where(share > 0, value * share, tf.zeros_like(value))

    def train_step(self, data):
        """One optimiser step; returns the batch's *pre-update* ``loss`` and ``deviance``."""
        scaled, rel, share = data if len(data) == 3 else (*data, None)
        variables = self.net.trainable_variables  # log_scale only when intensity_scale_trainable
        with tf.GradientTape() as tape:
            loss, deviance = self.model_step((scaled, rel))
            objective = self._weighted(loss, share)
        grads = tape.gradient(objective, variables)
        self.optimizer.apply(grads, variables)
        return {"loss": objective, "deviance": self._weighted(deviance, share)}

    def test_step(self, data):
        """``loss`` and ``deviance`` of one batch, no update."""
        scaled, rel, share = data if len(data) == 3 else (*data, None)
        loss, deviance = self.model_step((scaled, rel))
        return {"loss": self._weighted(loss, share), "deviance": self._weighted(deviance, share)}
