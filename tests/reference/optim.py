"""Float64 NumPy reference implementations of PyTorch optimizer update rules.

These follow ``torch.optim`` semantics (torch 2.x, single-tensor code path)
and are written straight from the formulas so that they are easy to audit.
Every function is pure: it takes arrays (converted to float64 copies), never
modifies its inputs, and returns new arrays.  One tensor, one step per call.
``step`` is always the 1-based index of the step being taken.

Common preprocessing (every algorithm, in this order)::

    g = -g                    if maximize
    g = g + weight_decay * p  if weight_decay != 0   (L2; NOT for AdamW)

SGD (``sgd_step``)::

    if momentum != 0:
        buf = g                                   on step 1 (no dampening)
        buf = momentum * buf + (1 - dampening) * g  afterwards
        g   = g + momentum * buf   if nesterov
        g   = buf                  otherwise
    p = p - lr * g

Adagrad (``adagrad_step``)::

    clr       = lr / (1 + (step - 1) * lr_decay)
    state_sum = state_sum + g * g
    p         = p - clr * g / (sqrt(state_sum) + eps)

    (``initial_accumulator_value`` is only the initial value of state_sum:
    the caller creates state_sum = full_like(p, initial_accumulator_value).)

RMSprop (``rmsprop_step``)::

    square_avg = alpha * square_avg + (1 - alpha) * g * g
    if centered:
        grad_avg = alpha * grad_avg + (1 - alpha) * g     (torch: lerp)
        avg      = sqrt(square_avg - grad_avg ** 2) + eps
    else:
        avg      = sqrt(square_avg) + eps
    if momentum > 0:
        buf = momentum * buf + g / avg                    (buf starts at 0)
        p   = p - lr * buf
    else:
        p   = p - lr * g / avg

Adadelta (``adadelta_step``)::

    square_avg = rho * square_avg + (1 - rho) * g * g
    std        = sqrt(square_avg + eps)                   (new square_avg)
    delta      = sqrt(acc_delta + eps) / std * g          (old acc_delta)
    acc_delta  = rho * acc_delta + (1 - rho) * delta * delta
    p          = p - lr * delta

Adam / AdamW (``adam_step``; AdamW is ``decoupled_weight_decay=True``)::

    if weight_decay != 0:
        p = p * (1 - lr * weight_decay)  if decoupled  (before the moments)
        g = g + weight_decay * p         otherwise     (L2)
    m   = beta1 * m + (1 - beta1) * g                  (torch: lerp)
    v   = beta2 * v + (1 - beta2) * g * g
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    if amsgrad:
        vmax = maximum(vmax, v);  vhat = vmax
    else:
        vhat = v
    denom = sqrt(vhat) / sqrt(bc2) + eps     (eps AFTER bias-correcting sqrt(v))
    p     = p - (lr / bc1) * m / denom

Gradient clipping (``torch.nn.utils.clip_grad_norm_``)::

    total_norm = norm([norm(g_i, ord) for g_i in grads], ord)
    clip_coef  = min(max_norm / (total_norm + 1e-6), 1.0)
    g_i        = g_i * clip_coef                       (always multiplied)
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = [
    "sgd_step",
    "adagrad_step",
    "rmsprop_step",
    "adadelta_step",
    "adam_step",
    "adamw_step",
    "global_norm",
    "clip_grad_norm",
    "OPTIMIZER_REFERENCES",
]


def _f64(x):
    """A float64 copy of ``x`` (never aliases the input)."""
    return np.array(x, dtype=np.float64, copy=True)


def _opt_f64(x):
    return None if x is None else _f64(x)


def _preprocess_grad(p, g, weight_decay, maximize):
    """Maximize sign flip, then L2 weight decay (``g + wd * p``)."""
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


# --------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------
def sgd_step(p, g, buf, *, step, lr, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False):
    """One torch.optim.SGD step.  Returns ``(p_new, buf_new)``.

    ``buf`` is ignored on step 1 (and may be None then, or whenever
    ``momentum == 0``, in which case None is returned for it).
    """
    p = _f64(p)
    g = _preprocess_grad(p, _f64(g), weight_decay, maximize)
    new_buf = None
    if momentum != 0:
        if step == 1 or buf is None:
            # First step: buffer is the (decayed, sign-adjusted) gradient.
            new_buf = g.copy()
        else:
            new_buf = momentum * _f64(buf) + (1.0 - dampening) * g
        if nesterov:
            g = g + momentum * new_buf
        else:
            g = new_buf
    p_new = p - lr * g
    return p_new, new_buf


# --------------------------------------------------------------------------
# Adagrad
# --------------------------------------------------------------------------
def adagrad_step(p, g, state_sum, *, step, lr, lr_decay=0.0,
                 weight_decay=0.0, eps=1e-10, maximize=False):
    """One torch.optim.Adagrad step.  Returns ``(p_new, state_sum_new)``.

    Initialise ``state_sum`` as ``np.full_like(p, initial_accumulator_value)``.
    """
    p = _f64(p)
    g = _preprocess_grad(p, _f64(g), weight_decay, maximize)
    clr = lr / (1.0 + (step - 1) * lr_decay)
    state_sum = _f64(state_sum) + g * g
    std = np.sqrt(state_sum) + eps
    p_new = p - clr * g / std
    return p_new, state_sum


# --------------------------------------------------------------------------
# RMSprop
# --------------------------------------------------------------------------
def rmsprop_step(p, g, square_avg, grad_avg, momentum_buffer, *, step, lr,
                 alpha, eps, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False):
    """One torch.optim.RMSprop step.

    Returns ``(p_new, square_avg_new, grad_avg_new, momentum_buffer_new)``.
    ``grad_avg`` is used only if ``centered`` and ``momentum_buffer`` only if
    ``momentum > 0``; otherwise they are returned as None.  All state starts
    at zeros (None is accepted and treated as zeros).
    """
    del step  # RMSprop's update does not depend on the step count.
    p = _f64(p)
    g = _preprocess_grad(p, _f64(g), weight_decay, maximize)
    square_avg = alpha * _f64(square_avg) + (1.0 - alpha) * g * g
    new_grad_avg = None
    if centered:
        ga = np.zeros_like(p) if grad_avg is None else _f64(grad_avg)
        new_grad_avg = alpha * ga + (1.0 - alpha) * g
        avg = np.sqrt(square_avg - new_grad_avg * new_grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    new_buf = None
    if momentum > 0:
        b = np.zeros_like(p) if momentum_buffer is None else _f64(momentum_buffer)
        new_buf = momentum * b + g / avg
        p_new = p - lr * new_buf
    else:
        p_new = p - lr * g / avg
    return p_new, square_avg, new_grad_avg, new_buf


# --------------------------------------------------------------------------
# Adadelta
# --------------------------------------------------------------------------
def adadelta_step(p, g, square_avg, acc_delta, *, step, lr, rho, eps,
                  weight_decay=0.0, maximize=False):
    """One torch.optim.Adadelta step.

    Returns ``(p_new, square_avg_new, acc_delta_new)``; state starts at zeros.
    """
    del step  # Adadelta's update does not depend on the step count.
    p = _f64(p)
    g = _preprocess_grad(p, _f64(g), weight_decay, maximize)
    square_avg = rho * _f64(square_avg) + (1.0 - rho) * g * g
    acc_delta = _f64(acc_delta)
    std = np.sqrt(square_avg + eps)
    delta = np.sqrt(acc_delta + eps) / std * g
    acc_delta = rho * acc_delta + (1.0 - rho) * delta * delta
    p_new = p - lr * delta
    return p_new, square_avg, acc_delta


# --------------------------------------------------------------------------
# Adam / AdamW
# --------------------------------------------------------------------------
def adam_step(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, lr, beta1,
              beta2, eps, weight_decay=0.0, amsgrad=False, maximize=False,
              decoupled_weight_decay=False):
    """One torch.optim.Adam (or AdamW if ``decoupled_weight_decay``) step.

    Returns ``(p_new, exp_avg_new, exp_avg_sq_new, max_exp_avg_sq_new)``;
    ``max_exp_avg_sq`` is used only with ``amsgrad`` (else None is returned).
    All state starts at zeros (None max_exp_avg_sq is treated as zeros).
    """
    p = _f64(p)
    g = _f64(g)
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled_weight_decay:
            p = p * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * p
    exp_avg = beta1 * _f64(exp_avg) + (1.0 - beta1) * g
    exp_avg_sq = beta2 * _f64(exp_avg_sq) + (1.0 - beta2) * g * g
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    new_max = None
    if amsgrad:
        prev = np.zeros_like(p) if max_exp_avg_sq is None else _f64(max_exp_avg_sq)
        new_max = np.maximum(prev, exp_avg_sq)
        v_hat = new_max
    else:
        v_hat = exp_avg_sq
    denom = np.sqrt(v_hat) / math.sqrt(bias_correction2) + eps
    step_size = lr / bias_correction1
    p_new = p - step_size * exp_avg / denom
    return p_new, exp_avg, exp_avg_sq, new_max


adamw_step = functools.partial(adam_step, decoupled_weight_decay=True)
adamw_step.__doc__ = "One torch.optim.AdamW step (adam_step with decoupled weight decay)."


# --------------------------------------------------------------------------
# Gradient norm / clipping
# --------------------------------------------------------------------------
def _vector_norm(x, norm_type):
    """torch.linalg.vector_norm of a flattened float64 array.

    Deviation: torch raises for the +/-inf norm of an empty tensor; here an
    empty array has norm 0 (norms are non-negative, so 0 is the identity).
    """
    a = np.abs(np.asarray(x, dtype=np.float64).ravel())
    if norm_type == math.inf:
        return float(a.max()) if a.size else 0.0
    if norm_type == -math.inf:
        return float(a.min()) if a.size else 0.0
    if norm_type == 0:
        return float(np.count_nonzero(a))
    if a.size == 0:
        return 0.0
    if norm_type == 1:
        return float(a.sum())
    if norm_type == 2:
        return float(np.sqrt(np.sum(a * a)))
    return float(np.sum(a ** norm_type) ** (1.0 / norm_type))


def global_norm(grads, norm_type=2.0):
    """Total norm over a list of arrays, as torch's clip_grad_norm_ computes it:
    the norm of the vector of per-array norms (an empty list gives 0.0)."""
    norm_type = float(norm_type)
    grads = list(grads)
    if not grads:
        return 0.0
    norms = [_vector_norm(g, norm_type) for g in grads]
    return _vector_norm(np.array(norms, dtype=np.float64), norm_type)


def clip_grad_norm(grads, max_norm, norm_type=2.0):
    """torch.nn.utils.clip_grad_norm_ semantics, out of place.

    Returns ``(new_grads, total_norm)``; every gradient is multiplied by
    ``min(max_norm / (total_norm + 1e-6), 1.0)`` (even when that is 1.0).
    """
    grads = [_f64(g) for g in grads]
    total_norm = global_norm(grads, norm_type)
    if not grads:
        return [], total_norm
    clip_coef = float(max_norm) / (total_norm + 1e-6)
    clip_coef_clamped = min(clip_coef, 1.0)
    return [g * clip_coef_clamped for g in grads], total_norm


OPTIMIZER_REFERENCES = {
    "sgd": sgd_step,
    "adagrad": adagrad_step,
    "rmsprop": rmsprop_step,
    "adadelta": adadelta_step,
    "adam": adam_step,
    "adamw": adamw_step,
}
