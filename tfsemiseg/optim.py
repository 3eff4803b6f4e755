"""Optimisers with the polynomial ("poly") learning-rate decay of DeepLab, and the head LR multiplier.

lr(it) = base_lr * (1 - it / T) ** power is `keras.optimizers.schedules.PolynomialDecay`
with `end_learning_rate=0`. The "head at 10x the backbone LR" rule is applied by scaling the
head's gradients (`lr_multipliers`), which for Keras' SGD (v = mu v - lr g) is a 10x learning
rate for the gradient step of those variables, but not for weight decay: Keras' is decoupled
(w -= lr * wd * w, outside the momentum) and stays at 1x for the head, where the papers' PyTorch
/ Caffe SGD puts wd * w into the gradient, so that it is scaled by the head's 10x and passes
through the momentum (about 10x more at momentum 0.9). BUILD.md has the consequence;
`weight_decay_in_gradient=True` (the VOC and Cityscapes paper settings) gives the papers' kind.

A mean teacher (`mean_teacher`, `update_mean_teacher`) keeps the exponential moving average of a
network's weights, as Keras' optimizers do with `use_ema`; theirs averages only the trainable
variables and lives in the optimizer, where a teacher needs every weight (BatchNorm's statistics
too) in a network it can run.
"""

import keras
import tensorflow as tf

from tfsemiseg.models.segmenters import is_head_variable


def poly_schedule(lr, iterations, power=0.9):
    return keras.optimizers.schedules.PolynomialDecay(lr, max(1, iterations), end_learning_rate=0.0, power=power)


def segmenter_sgd(cfg):
    """The segmenter's SGD for a config: poly LR; decoupled weight decay unless
    `cfg.weight_decay_in_gradient`, where the method adds it to the gradient (`gradient_weight_decay`)."""
    return poly_sgd(cfg.lr, cfg.iterations, cfg.momentum, None if cfg.weight_decay_in_gradient else cfg.weight_decay)


def gradient_weight_decay(cfg):
    """The weight decay a method adds to its segmenter's gradient: the papers' (PyTorch, Caffe) kind."""
    return cfg.weight_decay if cfg.weight_decay_in_gradient else 0.0


def poly_sgd(lr, iterations, momentum=0.9, weight_decay=None, power=0.9):
    """SGD with momentum and poly decay. Weight decay is Keras' decoupled one (lr * wd * w per step,
    outside the momentum; see the module docstring)."""
    return keras.optimizers.SGD(poly_schedule(lr, iterations, power), momentum=momentum,
                                weight_decay=weight_decay or None)


def poly_adam(lr, iterations, beta_1=0.9, beta_2=0.99, power=0.9):
    return keras.optimizers.Adam(poly_schedule(lr, iterations, power), beta_1=beta_1, beta_2=beta_2)


def lr_multipliers(variables, head_lr_mult):
    """Per-variable gradient multipliers: `head_lr_mult` for `head_*` layers, 1 for the backbone."""
    return [head_lr_mult if is_head_variable(v) else 1.0 for v in variables]


def mean_teacher(network):
    """A copy of `network`, same weights: the network whose weights `update_mean_teacher` keeps at
    the exponential moving average of `network`'s (Tarvainen & Valpola, NeurIPS 2017). No optimizer
    steps it; it stays `trainable` so that a training-mode pass normalises with the batch's
    statistics (Keras runs the BatchNorm of a frozen network in inference mode). Create it under the
    strategy scope the network was created in."""
    teacher = keras.models.clone_model(network)
    teacher.set_weights(network.get_weights())
    return teacher


def update_mean_teacher(teacher, student, momentum, step):
    """teacher <- m teacher + (1 - m) student for every weight (BatchNorm statistics included), with
    m = min(momentum, 1 - 1 / (step + 1)): the teacher follows the student closely in the first
    steps, when its average would still hold the initial weights, and slowly from step
    1 / (1 - momentum) on (as U2PL's and PS-MT's teachers). Under tf.distribute each replica's copy
    takes the same update (the student's replicas are equal after the optimizer's step)."""
    step = tf.cast(step, tf.float32)
    m = tf.minimum(tf.cast(momentum, tf.float32), 1.0 - 1.0 / (step + 1.0))
    pairs = [(t.value, s.value) for t, s in zip(teacher.weights, student.weights)]

    def average(t, s):
        return t.assign(tf.cast(m, t.dtype) * t + tf.cast(1.0 - m, t.dtype) * s)

    def update(strategy, pairs):
        for t, s in pairs:
            strategy.extended.update(t, average, args=(s,), group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(update, tf.distribute.get_strategy(), pairs)
