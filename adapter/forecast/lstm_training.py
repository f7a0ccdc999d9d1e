"""Training IPA's LSTM load predictor offline, in plain numpy (backpropagation through time and Adam).

The network is small (one layer, 25 units by default, 12 time steps), so numpy trains it on two weeks of the
Twitter trace in minutes (about 4 s an epoch on an idle 2-core machine), and no training framework is needed.
Its matrices are tiny: on a busy machine `OPENBLAS_NUM_THREADS=1` trains several times faster than BLAS threads
fighting over the cores.

    make_dataset(rates, …) -> (X, Y)          samples every `stride_s` seconds: inputs and targets divided by
                                              the input window's max (the model is scale-free)
    train_lstm(rates, TrainingConfig(…)) -> TrainingResult   (weights + loss curves; `weights.save(path)`)

The last `validation_share` of the series (in time) is held out to pick the best epoch; hold the windows you
will evaluate on out of `rates` altogether (`ipa predictor train --start/--length`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from adapter.errors import UsageError
from adapter.forecast.predictors import LSTMWeights, lstm_forward, sigmoid

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class TrainingConfig:
    """How the LSTM is trained; defaults follow IPA (25 units, 12 bins of 10 s)."""

    hidden: int = 25
    """LSTM units; inference costs ~hidden² multiply-adds per step"""
    epochs: int = 25
    batch_size: int = 256
    learning_rate: float = 3e-3
    """Adam step size, decayed by `lr_decay` after every epoch"""
    lr_decay: float = 0.92
    clip_norm: float = 1.0
    """gradients rescaled to at most this global norm (the long zero gaps make rare huge errors)"""
    stride_s: int = 5
    """one training sample every `stride_s` seconds of the series"""
    horizons_s: tuple[int, ...] = (10, 20, 30, 60)
    """the future windows whose peak the network predicts, one output each"""
    bin_s: int = 10
    n_bins: int = 12
    validation_share: float = 0.1
    max_ratio: float = 4.0
    """targets above this multiple of the input window's max (restarts after a gap of zeros) are clipped"""
    seed: int = 0


@dataclass(frozen=True)
class TrainingResult:
    weights: LSTMWeights
    samples: int
    best_epoch: int
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)


def make_dataset(
    rates: np.ndarray, bin_s: int, n_bins: int, horizons_s: tuple[int, ...], stride_s: int, max_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (samples, n_bins) and targets (samples, horizons), both divided by each input window's max.

    A sample at second t sees the per-bin maxima of `rates[t − n_bins·bin_s : t]` and is asked for
    `max(rates[t : t + h])` for every h of `horizons_s`. Windows with no load at all are skipped.
    """
    rates = np.asarray(rates, dtype=np.float64)
    window, longest = bin_s * n_bins, max(horizons_s)
    starts = np.arange(window, rates.size - longest + 1, stride_s)
    if starts.size == 0:
        raise UsageError(f"the training series is too short: need more than {window + longest} seconds")
    bin_max = sliding_window_view(rates, bin_s).max(axis=1)  # bin_max[j] = max(rates[j : j + bin_s])
    inputs = bin_max[starts[:, None] - window + bin_s * np.arange(n_bins)[None, :]]
    targets = np.stack([sliding_window_view(rates, h).max(axis=1)[starts] for h in horizons_s], axis=1)
    scale = inputs.max(axis=1)
    keep = scale > 0
    scale = scale[keep][:, None]
    return inputs[keep] / scale, np.minimum(targets[keep] / scale, max_ratio)


def _init_params(hidden: int, outputs: int, rng: np.random.Generator) -> Params:
    b = np.zeros(4 * hidden)
    b[hidden : 2 * hidden] = 1.0  # forget gate open at first: gradients flow through the 12 steps
    return {
        "w": rng.normal(0, 1 / math.sqrt(1 + hidden), (1 + hidden, 4 * hidden)),
        "b": b,
        "w_out": rng.normal(0, 1 / math.sqrt(hidden), (hidden, outputs)),
        "b_out": np.ones(outputs),  # the future peak is about the past peak
    }


def loss_and_grads(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """Mean squared error of the network on (x, y) and its gradient with respect to every parameter."""
    w, b, w_out, b_out = params["w"], params["b"], params["w_out"], params["b_out"]
    hidden = w_out.shape[0]
    batch, steps = x.shape
    h = np.zeros((batch, hidden))
    c = np.zeros_like(h)
    tape = []
    for t in range(steps):
        xt = x[:, t : t + 1]
        z = xt * w[0] + h @ w[1:] + b
        i, f = sigmoid(z[:, :hidden]), sigmoid(z[:, hidden : 2 * hidden])
        g, o = np.tanh(z[:, 2 * hidden : 3 * hidden]), sigmoid(z[:, 3 * hidden :])
        c_new = f * c + i * g
        tc = np.tanh(c_new)
        tape.append((xt, h, c, i, f, g, o, tc))
        h, c = o * tc, c_new
    out = h @ w_out + b_out
    err = out - y
    loss = float(np.mean(err * err))
    d_out = 2.0 * err / err.size
    grads: Params = {"w_out": h.T @ d_out, "b_out": d_out.sum(axis=0), "w": np.zeros_like(w), "b": np.zeros_like(b)}
    dh = d_out @ w_out.T
    dc = np.zeros_like(dh)
    for xt, h_prev, c_prev, i, f, g, o, tc in reversed(tape):
        do = dh * tc
        dc = dc + dh * o * (1.0 - tc * tc)
        dz = np.concatenate(
            [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), do * o * (1 - o)], axis=1
        )
        grads["w"][0] += (xt * dz).sum(axis=0)
        grads["w"][1:] += h_prev.T @ dz
        grads["b"] += dz.sum(axis=0)
        dh = dz @ w[1:].T
        dc = dc * f
    return loss, grads


def _mse(params: Params, x: np.ndarray, y: np.ndarray, chunk: int = 8192) -> float:
    weights = _to_weights(params, TrainingConfig(hidden=params["w_out"].shape[0]), "")
    total = 0.0
    for k in range(0, x.shape[0], chunk):
        err = lstm_forward(weights, x[k : k + chunk]) - y[k : k + chunk]
        total += float((err * err).sum())
    return total / max(1, y.size)


def _to_weights(params: Params, config: TrainingConfig, trained_on: str) -> LSTMWeights:
    return LSTMWeights(
        w=params["w"].copy(),
        b=params["b"].copy(),
        w_out=params["w_out"].copy(),
        b_out=params["b_out"].copy(),
        horizons_s=tuple(config.horizons_s),
        bin_s=config.bin_s,
        n_bins=config.n_bins,
        trained_on=trained_on,
    )


def train_lstm(
    rates: np.ndarray,
    config: TrainingConfig = TrainingConfig(),
    *,
    trained_on: str = "",
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> TrainingResult:
    """Train on the per-second series `rates`; `on_epoch(epoch, train_loss, validation_loss)` reports progress.

    Returns the weights of the epoch with the lowest validation loss. Deterministic for a given `config.seed`.
    """
    x, y = make_dataset(rates, config.bin_s, config.n_bins, config.horizons_s, config.stride_s, config.max_ratio)
    split = int(x.shape[0] * (1 - config.validation_share))
    if split < config.batch_size or x.shape[0] - split < 1:
        raise UsageError(f"too few training samples ({x.shape[0]}): give a longer series")
    x_train, y_train, x_val, y_val = x[:split], y[:split], x[split:], y[split:]
    rng = np.random.default_rng(config.seed)
    params = _init_params(config.hidden, len(config.horizons_s), rng)
    moment1 = {k: np.zeros_like(v) for k, v in params.items()}
    moment2 = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    best = (_mse(params, x_val, y_val), 0, {k: v.copy() for k, v in params.items()})
    train_curve, val_curve = [], []
    lr = config.learning_rate
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(split)
        losses = []
        for k in range(0, split - config.batch_size + 1, config.batch_size):
            batch = order[k : k + config.batch_size]
            loss, grads = loss_and_grads(params, x_train[batch], y_train[batch])
            losses.append(loss)
            norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
            shrink = min(1.0, config.clip_norm / (norm + 1e-12))
            step += 1
            for name, g in grads.items():
                g = g * shrink
                moment1[name] = beta1 * moment1[name] + (1 - beta1) * g
                moment2[name] = beta2 * moment2[name] + (1 - beta2) * g * g
                m_hat = moment1[name] / (1 - beta1**step)
                v_hat = moment2[name] / (1 - beta2**step)
                params[name] -= lr * m_hat / (np.sqrt(v_hat) + eps)
        lr *= config.lr_decay
        val = _mse(params, x_val, y_val)
        train_curve.append(float(np.mean(losses)))
        val_curve.append(val)
        if val < best[0]:
            best = (val, epoch, {k: v.copy() for k, v in params.items()})
        if on_epoch is not None:
            on_epoch(epoch, train_curve[-1], val)
    return TrainingResult(
        weights=_to_weights(best[2], config, trained_on),
        samples=int(x.shape[0]),
        best_epoch=best[1],
        train_loss=train_curve,
        validation_loss=val_curve,
    )
