"""Times three queries over a Delta table, best of N, and prints one JSON line.

usage: query_readers.py duckdb|duckdb-files|polars TABLE_URI DAY CALL_ID [REPS]

The queries (the layout benchmark of `cargo bench --bench delta`, part h):
  group  a GROUP BY over everything: calls and mean duration per source and date;
  range  a one-day time range on started_at (noon DAY to noon the next day, so two
         partitions are read in part): count and mean duration;
  lookup one call by call_id.
DuckDB 1.4.4 reads through `delta_scan` (its delta extension, loaded by path); Polars
through `scan_delta`. `duckdb-files` reads the table's current files with `read_parquet`
(the list taken from `delta_scan` first, untimed): the files' layout without the log. Each result is checked to be the same for every table by the caller.
"""

import datetime as dt
import glob
import json
import os
import sys
import time


def best(fn, reps):
    out, b = None, 1e9
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        b = min(b, time.perf_counter() - t)
    return b * 1000, out


def main():
    mode, uri, day, call_id = sys.argv[1:5]
    reps = int(sys.argv[5]) if len(sys.argv) > 5 else 5
    lo = dt.datetime.fromisoformat(day) + dt.timedelta(hours=12)
    hi = lo + dt.timedelta(days=1)
    res = {"reader": mode}
    if mode in ("duckdb", "duckdb-files"):
        import duckdb

        con = duckdb.connect(config={"allow_unsigned_extensions": "true",
                                     "autoinstall_known_extensions": "false",
                                     "autoload_known_extensions": "false"})
        ext = glob.glob(os.path.join(os.path.dirname(duckdb.__file__), "..", "duckdb_ext",
                                     "extensions", "*", "*", "delta.duckdb_extension"))[0]
        con.execute(f"LOAD '{os.path.abspath(ext)}'")
        t = f"delta_scan('{uri}')"
        if mode == "duckdb-files":
            files = [r[0] for r in con.execute(f"SELECT DISTINCT filename FROM {t}").fetchall()]
            t = "read_parquet([" + ", ".join(f"'{f}'" for f in files) + "], hive_partitioning = true)"
        q = {
            "group": f"SELECT source, date, count(*), round(avg(duration_ms), 3) FROM {t} GROUP BY ALL ORDER BY ALL",
            "range": f"SELECT count(*), round(avg(duration_ms), 3) FROM {t} WHERE started_at >= '{lo.isoformat()}+00' AND started_at < '{hi.isoformat()}+00'",
            "lookup": f"SELECT call_id, duration_ms FROM {t} WHERE call_id = '{call_id}'",
        }
        for k, sql in q.items():
            ms, rows = best(lambda: con.execute(sql).fetchall(), reps)
            res[k] = ms
            res[k + "_result"] = str(rows if k != "group" else (len(rows), sum(r[2] for r in rows)))
    elif mode == "polars":
        import polars as pl

        lf = lambda: pl.scan_delta(uri)
        lo_t = lo.replace(tzinfo=dt.timezone.utc)
        hi_t = hi.replace(tzinfo=dt.timezone.utc)
        q = {
            "group": lambda: lf().group_by("source", "date").agg(pl.len(), pl.col("duration_ms").mean()).collect(),
            "range": lambda: lf().filter((pl.col("started_at") >= lo_t) & (pl.col("started_at") < hi_t)).select(pl.len(), pl.col("duration_ms").mean()).collect(),
            "lookup": lambda: lf().filter(pl.col("call_id") == call_id).select("call_id", "duration_ms").collect(),
        }
        for k, fn in q.items():
            ms, df = best(fn, reps)
            res[k] = ms
            if k == "group":
                res[k + "_result"] = str((df.height, int(df["len"].sum())))
            else:
                res[k + "_result"] = str(df.rows())
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(res))


main()
