"""`ipa predictor train` fits the LSTM load predictor to a trace; `ipa predictor eval` compares predictors on
held-out load: how far off the predicted interval peaks are, how often they fall short, how much they overshoot.

    ipa predictor train --trace twitter.tbz2 --start 0 --length 1200000 --out adapter/forecast/lstm.npz
    ipa predictor eval --trace twitter.tbz2 --start 1200000 --predictor reactive,ewma,lstm,oracle --interval 20
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from tqdm import tqdm

from adapter.cli.workload_args import add_trace_arguments, trace_from_args
from adapter.errors import UsageError
from adapter.forecast.conformal import ConformalPredictor
from adapter.forecast.lstm_training import TrainingConfig, train_lstm
from adapter.forecast.predictors import (
    DEFAULT_LSTM_WEIGHTS,
    PREDICTOR_NAMES,
    LoadPredictor,
    LSTMWeights,
    PredictorScore,
    evaluate_predictor,
    make_predictor,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predictor", help="train and evaluate load predictors")
    sub = p.add_subparsers(dest="predictor_command", metavar="ACTION")
    sub.required = True

    train = sub.add_parser(
        "train",
        help="train the LSTM predictor on a trace (plain numpy) and save its weights",
        description="Train IPA's LSTM (12 bins of the max over 10 s -> the max over the next 10/20/30/60 s) on a "
        "window of a trace. Keep the windows you evaluate or experiment on out of the training window. On a busy "
        "machine, OPENBLAS_NUM_THREADS=1 makes it faster.",
    )
    add_trace_arguments(train)
    train.add_argument("--out", required=True, metavar="NPZ", help="where to write the weights (.npz)")
    defaults = TrainingConfig()
    train.add_argument("--hidden", type=int, default=defaults.hidden, help=f"LSTM units (default {defaults.hidden})")
    train.add_argument("--epochs", type=int, default=defaults.epochs, help=f"default {defaults.epochs}")
    train.add_argument(
        "--stride", type=int, default=defaults.stride_s, metavar="S", help="one sample every S seconds (default 5)"
    )
    train.set_defaults(func=_train)

    evaluate = sub.add_parser(
        "eval",
        help="score predictors on a trace: MAE, share under-predicted, over-provisioning",
        description="At every interval boundary, each predictor is given the load so far and asked for the peak "
        "of the next interval; the table compares its answers with the real peaks.",
    )
    add_trace_arguments(evaluate)
    evaluate.add_argument(
        "--predictor", default="reactive,ewma,lstm", help=f"comma-separated, of: {', '.join(PREDICTOR_NAMES)}"
    )
    evaluate.add_argument("--interval", type=int, default=20, metavar="S", help="adapter interval (default 20 s)")
    evaluate.add_argument("--warmup", type=int, default=120, metavar="S", help="history before the first prediction")
    evaluate.add_argument("--weights", metavar="NPZ", help=f"LSTM weights (default {DEFAULT_LSTM_WEIGHTS.name} shipped)")
    evaluate.add_argument(
        "--quantile", type=float, metavar="Q",
        help="also score each predictor planning for the Q quantile of its recent errors (the spec's load_quantile, "
        "adapter.forecast.conformal): its under-predicted share is 1 − coverage, its over-provisioning the margin's cost",
    )
    evaluate.add_argument("--quantile-window", type=int, default=30, metavar="N",
                          help="intervals the quantile is taken over (default 30)")
    evaluate.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    if args.hidden < 1 or args.epochs < 1 or args.stride < 1:
        raise UsageError("--hidden, --epochs and --stride must be >= 1")
    trace = trace_from_args(args)
    config = TrainingConfig(hidden=args.hidden, epochs=args.epochs, stride_s=args.stride, seed=args.seed)
    began = time.perf_counter()
    with tqdm(total=config.epochs, unit="epoch", desc="train lstm") as bar:

        def epoch_done(epoch: int, train_loss: float, validation_loss: float) -> None:
            bar.set_postfix(train=f"{train_loss:.5f}", validation=f"{validation_loss:.5f}")
            bar.update(1)

        result = train_lstm(trace.rates, config, trained_on=trace.name, on_epoch=epoch_done)
    result.weights.save(args.out)
    print(
        f"trained on {trace.name} ({trace.duration_s} s, {result.samples} samples) in "
        f"{time.perf_counter() - began:.0f} s; best epoch {result.best_epoch}, validation MSE "
        f"{min(result.validation_loss):.5f}; wrote {args.out}"
    )
    return 0


def _table(scores: list[tuple[PredictorScore, float]]) -> list[str]:
    lines = [
        "| predictor | intervals | MAE (rps) | under-predicted | mean shortfall | mean over-provisioning | µs/prediction |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s, micros in scores:
        lines.append(
            f"| {s.predictor} | {s.intervals} | {s.mae_rps:.2f} | {100 * s.under_share:.1f} % | "
            f"{100 * s.mean_shortfall:.1f} % | {100 * s.over_provisioning:.1f} % | {micros:.0f} |"
        )
    return lines


def _eval(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.predictor.split(",") if n.strip()]
    if not names:
        raise UsageError("--predictor names no predictor")
    if args.interval < 1 or args.warmup < 0:
        raise UsageError("--interval must be >= 1 and --warmup >= 0")
    trace = trace_from_args(args)
    weights = LSTMWeights.load(args.weights or DEFAULT_LSTM_WEIGHTS) if "lstm" in names else None
    predictors: list[tuple[str, LoadPredictor]] = [
        (n, make_predictor(n, trace=trace.rates, weights=weights)) for n in names
    ]
    if args.quantile is not None:
        predictors += [
            (f"{n}+q{args.quantile:g}", ConformalPredictor(p, args.quantile, args.quantile_window))
            for n, p in list(predictors) if n != "oracle"
        ]
    scores = []
    for label, predictor in tqdm(predictors, unit="predictor", desc="eval", leave=False):
        began = time.perf_counter()
        score = replace(evaluate_predictor(predictor, trace.rates, args.interval, args.warmup), predictor=label)
        scores.append((score, (time.perf_counter() - began) / score.intervals * 1e6))
    print(f"{trace.name}: {trace.duration_s} s, mean {trace.mean_rps:.1f} rps, peak {trace.peak_rps:.1f} rps; "
          f"interval {args.interval} s")  # fmt: skip
    if weights is not None:
        print(f"lstm: trained on {weights.trained_on or 'unknown data'} (keep it apart from the evaluated window)")
    for line in _table(scores):
        print(line)
    return 0
