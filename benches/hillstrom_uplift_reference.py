"""The reference for examples/hillstrom-uplift.toml: scikit-uplift's two-model learner with
scikit-learn's logistic regression, on the same rows, features and split (women's e-mail
against no e-mail, target visit, rows with index % 5 == 4 the test set); then the same
two-model learner with LightGBM 4 arms (the reference for `type = "gbdt"` arms: 100 trees
of 7 leaves at 0.05, at least 100 rows a leaf, one thread, fitted on every non-test row).

    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install scikit-uplift==0.5.1 pandas lightgbm
    /tmp/pyref/bin/python benches/hillstrom_uplift_reference.py
"""
import os

import pandas as pd, numpy as np
from sklearn.linear_model import LogisticRegression
from sklift.models import TwoModels
from sklift.metrics import qini_auc_score, uplift_auc_score, uplift_at_k
d = pd.read_csv(os.environ.get("HALYARD_REFERENCE_DATA", "../shared/data") + "/hillstrom.csv")
d["row"] = np.arange(len(d))
d = d[d.segment.isin(["Womens E-Mail", "No E-Mail"])]
t = (d.segment == "Womens E-Mail").astype(int)
X = pd.get_dummies(d[["recency","history_segment","history","mens","womens","zip_code","newbie","channel"]].astype({"mens":str,"womens":str,"newbie":str}), dtype=float)
X[["recency","history"]] = (X[["recency","history"]]-X[["recency","history"]].mean())/X[["recency","history"]].std()
test = (d.row % 5 == 4).values
y = d.visit.values
m = TwoModels(estimator_trmnt=LogisticRegression(max_iter=1000), estimator_ctrl=LogisticRegression(max_iter=1000), method="vanilla")
m.fit(X[~test], y[~test], t[~test])
u = m.predict(X[test])
print("sklift TwoModels(LogisticRegression) qini %.4f auuc %.4f uplift@30 %.4f" % (qini_auc_score(y[test], u, t[test]), uplift_auc_score(y[test], u, t[test]), uplift_at_k(y[test], u, t[test], strategy="overall", k=0.3)))
from lightgbm import LGBMClassifier
def trees():
    return LGBMClassifier(n_estimators=100, num_leaves=7, learning_rate=0.05, min_child_samples=100, n_jobs=1, deterministic=True, verbose=-1)
# (LightGBM refuses the dummies' names, such as "history_segment_1) $0 - $100".)
X.columns = [f"f{k}" for k in range(X.shape[1])]
m = TwoModels(estimator_trmnt=trees(), estimator_ctrl=trees(), method="vanilla")
m.fit(X[~test], y[~test], t[~test])
u = m.predict(X[test])
print("sklift TwoModels(LGBMClassifier) qini %.4f auuc %.4f uplift@30 %.4f" % (qini_auc_score(y[test], u, t[test]), uplift_auc_score(y[test], u, t[test]), uplift_at_k(y[test], u, t[test], strategy="overall", k=0.3)))
