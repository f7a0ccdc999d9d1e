"""Load predictors: the reactive, EWMA-trend, LSTM (numpy inference from the shipped weights) and oracle
predictors; LSTM training (gradients checked numerically); evaluation and the `ipa predictor` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapter.cli import main as ipa
from adapter.errors import UsageError
from adapter.forecast.lstm_training import (
    TrainingConfig,
    _init_params,
    loss_and_grads,
    make_dataset,
    train_lstm,
)
from adapter.forecast.predictors import (
    DEFAULT_LSTM_WEIGHTS,
    PREDICTOR_NAMES,
    EWMAPredictor,
    LSTMWeights,
    evaluate_predictor,
    make_predictor,
)
from adapter.workloads.traces import synthetic_trace

BURSTY = synthetic_trace("bursty", duration_s=1200, seed=5).rates


def test_reactive_is_the_last_intervals_peak() -> None:
    reactive = make_predictor("reactive")
    history = np.array([1, 9, 2, 3, 4, 5], dtype=float)
    assert reactive.predict(history, 4) == 5
    assert reactive.predict(history, 5) == 9
    assert reactive.predict(history, 100) == 9
    assert reactive.predict([], 20) == 0


def test_oracle_is_exact() -> None:
    oracle = make_predictor("oracle", trace=BURSTY)
    for t in (0, 120, 500, 1190):
        assert oracle.predict(BURSTY[:t], 20) == BURSTY[t : t + 20].max()
    # a history that does not start at second 0 says where it is with now_s
    assert oracle.predict(BURSTY[400:500], 20, now_s=500) == BURSTY[500:520].max()
    assert oracle.predict(BURSTY, 20) == 0  # past the end: no load
    score = evaluate_predictor(oracle, BURSTY, 20)
    assert score.mae_rps == 0 and score.under_share == 0 and score.over_provisioning == 0


def test_ewma_follows_level_and_trend() -> None:
    ewma = EWMAPredictor()
    assert ewma.predict(np.full(200, 7.0), 20) == pytest.approx(7.0)
    ramp = np.arange(480, dtype=float)  # peaks of 20 s intervals rise by 20 per interval
    trending = EWMAPredictor(alpha=0.5, beta=0.5)
    assert trending.predict(ramp, 20) == pytest.approx(ramp[-1] + 20, rel=0.02)
    assert trending.predict(ramp, 20) > make_predictor("reactive").predict(ramp, 20) > ewma.predict(ramp, 20)
    assert ewma.predict(np.array([3.0, 4.0]), 20) == 4  # less than one interval of history
    assert ewma.predict(np.array([]), 20) == 0
    falling = np.concatenate([np.full(100, 50.0), np.zeros(100)])
    assert ewma.predict(falling, 20) >= 0


def test_the_shipped_lstm_loads_and_predicts_finite_positive_values() -> None:
    assert DEFAULT_LSTM_WEIGHTS.is_file()
    weights = LSTMWeights.load(DEFAULT_LSTM_WEIGHTS)
    assert weights.n_bins == 12 and weights.bin_s == 10 and 20 in weights.horizons_s
    lstm = make_predictor("lstm")
    predictions = [lstm.predict(BURSTY[:t], 20) for t in range(120, 1180, 20)]
    assert np.all(np.isfinite(predictions)) and min(predictions) > 0
    # in the load's range: neither wild nor stuck at zero
    assert 0.5 * BURSTY.min() < np.mean(predictions) < 2 * BURSTY.max()
    # scale-free: twice the load, twice the prediction
    assert lstm.predict(2 * BURSTY[:600], 20) == pytest.approx(2 * lstm.predict(BURSTY[:600], 20))
    # short and empty histories
    assert lstm.predict(BURSTY[:5], 20) > 0
    assert lstm.predict([], 20) == 0 and lstm.predict(np.zeros(300), 20) == 0
    # other horizons interpolate between the trained outputs
    assert all(np.isfinite(lstm.predict(BURSTY[:600], h)) for h in (1, 15, 30, 45, 600))


def test_lstm_is_closer_than_a_constant_guess_on_unseen_load() -> None:
    rates = synthetic_trace("fluctuating", duration_s=3000, seed=11).rates
    lstm = evaluate_predictor(make_predictor("lstm"), rates, 20)
    mean_guess = np.abs(
        rates.mean() - np.array([rates[t : t + 20].max() for t in range(120, rates.size - 19, 20)])
    ).mean()
    assert lstm.mae_rps < 0.5 * mean_guess


def test_lstm_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(0)
    params = _init_params(4, 2, rng)
    for name in params:
        params[name] = params[name] + rng.normal(0, 0.3, params[name].shape)
    x, y = rng.random((5, 6)), rng.random((5, 2))
    _, grads = loss_and_grads(params, x, y)
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            old = value[index]
            value[index] = old + 1e-6
            up, _ = loss_and_grads(params, x, y)
            value[index] = old - 1e-6
            down, _ = loss_and_grads(params, x, y)
            value[index] = old
            numeric[index] = (up - down) / 2e-6
        assert np.allclose(grads[name], numeric, atol=1e-7), name


def test_dataset_targets_are_future_peaks_over_the_window_max() -> None:
    rates = np.arange(300, dtype=float)
    x, y = make_dataset(rates, bin_s=10, n_bins=12, horizons_s=(10, 20), stride_s=50, max_ratio=10)
    # first sample at t=120: bins end at 9, 19, ..., 119; targets max(rates[120:130]) = 129, 139
    assert x[0].tolist() == pytest.approx((np.arange(9, 120, 10) / 119).tolist())
    assert y[0].tolist() == pytest.approx([129 / 119, 139 / 119])


def test_training_is_deterministic_and_weights_round_trip(tmp_path: Path) -> None:
    config = TrainingConfig(hidden=6, epochs=2, batch_size=64, stride_s=5)
    rates = synthetic_trace("fluctuating", duration_s=4000, seed=2).rates
    first = train_lstm(rates, config, trained_on="synthetic")
    second = train_lstm(rates, config, trained_on="synthetic")
    assert np.array_equal(first.weights.w, second.weights.w)
    assert len(first.validation_loss) == 2 and first.validation_loss[-1] < 0.5
    path = tmp_path / "w.npz"
    first.weights.save(path)
    loaded = LSTMWeights.load(path)
    assert loaded.trained_on == "synthetic" and loaded.horizons_s == config.horizons_s
    a = make_predictor("lstm", weights=first.weights).predict(rates[:500], 20)
    assert make_predictor("lstm", weights=path).predict(rates[:500], 20) == a


def test_registry_and_bad_inputs(tmp_path: Path) -> None:
    assert set(PREDICTOR_NAMES) == {"reactive", "ewma", "lstm", "oracle"}
    for name in ("reactive", "ewma", "lstm"):
        assert make_predictor(name).name == name
    with pytest.raises(UsageError, match="unknown predictor 'arima'"):
        make_predictor("arima")
    with pytest.raises(UsageError, match="oracle predictor needs the whole trace"):
        make_predictor("oracle")
    with pytest.raises(UsageError, match="horizon must be >= 1"):
        make_predictor("reactive").predict([1.0], 0)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    with pytest.raises(UsageError, match="not an LSTM weights file"):
        LSTMWeights.load(bad)
    with pytest.raises(UsageError, match="too short to evaluate"):
        evaluate_predictor(make_predictor("reactive"), np.ones(100), 20)


def test_ipa_predictor_train_and_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "lstm.npz"
    train = ["predictor", "train", "--trace", "synthetic:fluctuating", "--length", "3000", "--seed", "4",
             "--hidden", "5", "--epochs", "1", "--out", str(weights)]
    assert ipa(train) == 0 and weights.is_file()
    assert "best epoch 1" in capsys.readouterr().out
    evaluate = ["predictor", "eval", "--trace", "synthetic:bursty", "--length", "1200",
                "--predictor", "reactive,ewma,lstm,oracle", "--interval", "20", "--weights", str(weights)]
    assert ipa(evaluate) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 4 and "MAE (rps)" in table[0]
    assert table[-1].startswith("| oracle | 54 | 0.00 | 0.0 % |")
    assert ipa([*evaluate[:7], "reactive,oracle", "--interval", "20", "--quantile", "0.9"]) == 0
    rows = {line.split(" | ")[0][2:]: line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert set(rows) == {"predictor", "---", "reactive", "oracle", "reactive+q0.9"}  # the oracle needs no margin
    under = {n: float(rows[n].split(" | ")[3].rstrip(" %")) for n in ("reactive", "reactive+q0.9")}
    assert under["reactive+q0.9"] < under["reactive"]
    assert ipa(["predictor", "eval", "--trace", "synthetic:bursty", "--predictor", "prophet"]) == 2
    assert "unknown predictor 'prophet'" in capsys.readouterr().err
