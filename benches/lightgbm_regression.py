"""LightGBM fitting numbers, the reference for boosted trees with `[model] objective`
(`examples/walmart-sales-gbdt.toml`; benches/RESULTS.md): weekly sales of
../shared/data/walmart-weekly.csv from the store (categorical), the holiday flag,
temperature, fuel price, CPI and unemployment (`Date` left out).

Rows with index % n == n - 1 are the test set (`--holdout-every n`, as Halyard's
`holdout_every`; the rows go date by date through the 45 stores, so 7 puts every store in
both parts where 5 would hold out whole stores); the model is fitted on every other row (no early stopping: both sides grow all trees). Prints the settings and,
for each objective, the test RMSE, MAE, R² and mean Poisson deviance (scikit-learn's) and
the fit's wall time.

    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install lightgbm scikit-learn pandas
    /tmp/pyref/bin/python benches/lightgbm_regression.py
        [--objective l2 l1 poisson] [--holdout-every 7] [--trees 300] [--learning-rate 0.05]
"""
import argparse
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, mean_poisson_deviance, mean_squared_error, r2_score

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/walmart-weekly.csv"))
parser.add_argument("--objective", nargs="+", default=["l2", "l1", "poisson"])
parser.add_argument("--holdout-every", type=int, default=7)
parser.add_argument("--trees", type=int, default=300)
parser.add_argument("--learning-rate", type=float, default=0.05)
parser.add_argument("--num-leaves", type=int, default=15)
parser.add_argument("--min-data-in-leaf", type=int, default=50)
args = parser.parse_args()

df = pd.read_csv(args.data)
y = df.pop("Weekly_Sales").to_numpy(dtype=np.float64)
df = df.drop(columns=["Date"])
df["Store"] = df["Store"].astype("category")
test = np.arange(len(df)) % args.holdout_every == args.holdout_every - 1
names = {"poisson": "poisson", "l2": "regression", "l1": "regression_l1"}
for objective in args.objective:
    params = dict(
        objective=names[objective],
        learning_rate=args.learning_rate,
        num_leaves=args.num_leaves,
        min_data_in_leaf=args.min_data_in_leaf,
        num_threads=1,
        seed=1,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )
    start = time.perf_counter()
    model = lgb.train(params, lgb.Dataset(df[~test], y[~test]), num_boost_round=args.trees)
    seconds = time.perf_counter() - start
    p = model.predict(df[test])
    figures = dict(
        rmse=np.sqrt(mean_squared_error(y[test], p)),
        mae=mean_absolute_error(y[test], p),
        r2=r2_score(y[test], p),
        mean_prediction=p.mean(),
        mean_label=y[test].mean(),
    )
    if objective == "poisson":
        figures["poisson_deviance"] = mean_poisson_deviance(y[test], p)
    print(f"{objective}: settings {params}, trees {args.trees}, fit {seconds:.2f} s")
    print("   " + ", ".join(f"test_{k} {v:.4f}" for k, v in figures.items()))
