"""LightGBM on UCI bank marketing with the split protocol of ../shared/data/README.md, the
reference `[model] type = "gbdt"` is measured against (benches/RESULTS.md).

Rows with index % 5 == 4 are the test set; rows with index % 5 == 3 are the early-stopping
rows; the model is fitted on the others. Categorical columns are LightGBM's native
categoricals. Prints the settings, the trees kept, the test AUC and log loss, the fit's
wall time (median of --repeat fits) and the batch prediction of the test rows (median of
--repeat predictions with the same threads: rows/s).

    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install lightgbm scikit-learn pandas
    /tmp/pyref/bin/python benches/lightgbm_bank.py [--with-duration] [--threads 1]
        [--trees 2000] [--learning-rate 0.02] [--num-leaves 31] [--no-early-stopping]
        [--feature-fraction F] [--bagging-fraction B] [--lambda-l2 L] [--min-data-in-leaf N]
        [--ensemble M]

With --ensemble M, M boosters with seeds 1, 2, … M (each its own rows and columns drawn
by the fractions) and their probabilities averaged, as `[model] ensemble` does; the fit's
time is then the last member's.
"""
import argparse
import statistics
import time
from pathlib import Path

import lightgbm as lgb
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/bank-full.csv"))
parser.add_argument("--with-duration", action="store_true")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--trees", type=int, default=2000)
parser.add_argument("--learning-rate", type=float, default=0.02)
parser.add_argument("--num-leaves", type=int, default=31)
parser.add_argument("--early-stopping", type=int, default=100)
parser.add_argument("--no-early-stopping", action="store_true")
parser.add_argument("--repeat", type=int, default=1)
parser.add_argument("--feature-fraction", type=float, default=1.0)
parser.add_argument("--bagging-fraction", type=float, default=1.0)
parser.add_argument("--lambda-l2", type=float, default=0.0)
parser.add_argument("--min-data-in-leaf", type=int, default=20)
parser.add_argument("--ensemble", type=int, default=1)
args = parser.parse_args()

df = pd.read_csv(args.data, sep=";")
y = (df.pop("y") == "yes").astype(int).to_numpy()
if not args.with_duration:
    df = df.drop(columns=["duration"])
for c in df.columns:
    if not pd.api.types.is_numeric_dtype(df[c]):
        df[c] = df[c].astype("category")
index = pd.RangeIndex(len(df)).to_numpy()
test, valid = index % 5 == 4, index % 5 == 3
fit = ~(test | valid)
params = dict(
    objective="binary",
    learning_rate=args.learning_rate,
    num_leaves=args.num_leaves,
    num_threads=args.threads,
    seed=1,
    deterministic=True,
    force_row_wise=True,
    verbose=-1,
    feature_fraction=args.feature_fraction,
    bagging_fraction=args.bagging_fraction,
    # LightGBM bags only with a frequency; Halyard draws the rows of every tree.
    bagging_freq=1 if args.bagging_fraction < 1 else 0,
    lambda_l2=args.lambda_l2,
    min_data_in_leaf=args.min_data_in_leaf,
)
print("settings:", params, "trees:", args.trees,
      "early stopping:", "off" if args.no_early_stopping else args.early_stopping)
members = []
for member in range(args.ensemble):
    times = []
    for _ in range(args.repeat):
        dfit = lgb.Dataset(df[fit], y[fit])
        dvalid = lgb.Dataset(df[valid], y[valid], reference=dfit)
        callbacks = [] if args.no_early_stopping else [lgb.early_stopping(args.early_stopping, verbose=False)]
        start = time.perf_counter()
        booster = lgb.train(dict(params, seed=1 + member), dfit, num_boost_round=args.trees,
                            valid_sets=[dvalid], callbacks=callbacks)
        times.append(time.perf_counter() - start)
    members.append(booster)
p = sum(b.predict(df[test], num_iteration=b.best_iteration or None) for b in members) / len(members)
print("trees kept:", ", ".join(str(b.best_iteration or b.num_trees()) for b in members))
print(f"test AUC {roc_auc_score(y[test], p):.4f}  log loss {log_loss(y[test], p):.4f}")
print(f"fit: median {statistics.median(times):.2f} s over {len(times)} (threads {args.threads})")
# Batch prediction of the test rows, as `cargo bench --bench gbdt -- gbdt_predict` times
# Halyard's (the same rows, one call each): from the data frame (LightGBM converts its
# categoricals on each call), and from a float matrix converted once (its C++ walk alone).
rows = int(test.sum())
frame = df[test]
matrix = frame.copy()
for c in matrix.columns:
    if isinstance(matrix[c].dtype, pd.CategoricalDtype):
        matrix[c] = matrix[c].cat.codes.astype("float64")
matrix = matrix.to_numpy(dtype="float64")
# (the last member's walk, timed below)
alone = booster.predict(df[test], num_iteration=booster.best_iteration or None)
assert (booster.predict(matrix, num_iteration=booster.best_iteration or None) == alone).all()
for name, data in [("data frame", frame), ("float matrix", matrix)]:
    predict_times = []
    for _ in range(max(args.repeat, 5)):
        start = time.perf_counter()
        booster.predict(data, num_iteration=booster.best_iteration or None, num_threads=args.threads)
        predict_times.append(time.perf_counter() - start)
    median = statistics.median(predict_times)
    print(f"predict from a {name}: {rows} rows, median {median * 1000:.1f} ms over {len(predict_times)}: {rows / median:,.0f} rows/s (threads {args.threads})")
