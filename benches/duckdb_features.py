"""The feature query of `halyard bench features` on DuckDB, the single-node reference.

Run by `halyard bench features --duckdb` (one run per call, alternating with Halyard's
engines): it reads the bench's generated Parquet tables, defines the three feature
functions the query uses as macros with Halyard's semantics, and does what the feature
stage's "query and shards" phase does: the query, split into SHARDS Parquet files by a
hash of the customer id, one COPY per shard. Prints one JSON line: the phase's seconds
(the tables' registration excluded, as in Halyard's phase) and the rows written.

Usage: duckdb_features.py DATA_DIR OUT_DIR QUERY_FILE --threads N [--shards 2]
"""

import argparse
import json
import pathlib
import shutil
import time

import duckdb

# Halyard's UDFs (features/src/udf.rs): bucketize counts the edges <= x (null for null);
# day_of_week is ISO (1 = Monday); week_of_year is the ISO week.
MACROS = """
CREATE MACRO bucketize(x, a, b, c, d) AS
  CASE WHEN x IS NULL THEN NULL
       ELSE (x >= a)::INTEGER + (x >= b)::INTEGER + (x >= c)::INTEGER + (x >= d)::INTEGER END;
CREATE MACRO day_of_week(d) AS isodow(d);
CREATE MACRO week_of_year(d) AS weekofyear(d);
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("query")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--shards", type=int, default=2)
    a = p.parse_args()
    data = pathlib.Path(a.data)
    out = pathlib.Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {a.threads}")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{data}/events/*.parquet')")
    con.execute(f"CREATE VIEW customers AS SELECT * FROM read_parquet('{data}/customers.parquet')")
    con.execute(f"CREATE VIEW campaigns AS SELECT * FROM read_parquet('{data}/campaigns.parquet')")
    con.execute(MACROS)
    query = pathlib.Path(a.query).read_text()
    con.execute(f"CREATE VIEW features AS {query}")
    targets = [out / f"part-{i:05}.parquet" for i in range(a.shards)]
    started = time.perf_counter()
    for i, target in enumerate(targets):
        con.execute(
            f"COPY (SELECT * FROM features WHERE hash(customer_id) % {a.shards} = {i}) "
            f"TO '{target}' (FORMAT parquet)"
        )
    seconds = time.perf_counter() - started
    rows = sum(
        con.execute(f"SELECT count(*) FROM read_parquet('{t}')").fetchone()[0] for t in targets
    )
    print(json.dumps({"seconds": seconds, "rows": rows, "duckdb": duckdb.__version__}))


if __name__ == "__main__":
    main()
