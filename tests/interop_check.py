"""Interop check: DuckDB and pyarrow read the lake callsync wrote, as users will.

Usage: python tests/interop_check.py <warehouse root> <state db>
"""
import sqlite3
import sys

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq

root, state_db = sys.argv[1], sys.argv[2]
glob = f"{root}/calls/**/*.parquet"
con = duckdb.connect()

rows, distinct = con.execute(
    f"SELECT count(*), count(DISTINCT call_id) FROM read_parquet('{glob}', hive_partitioning=true)"
).fetchall()[0]
expected = sqlite3.connect(state_db).execute("SELECT sum(rows_total) FROM sources").fetchone()[0]
assert rows > 0, "the lake is empty"
assert rows == expected, f"DuckDB counts {rows} rows, the state recorded {expected}"
assert rows == distinct, f"call_id is not unique: {rows} rows, {distinct} distinct"

types = dict(
    con.execute(
        f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{glob}', hive_partitioning=true))"
    ).fetchall()
)
assert types["started_at"] == "TIMESTAMP WITH TIME ZONE", types["started_at"]
assert types["extracted_at"] == "TIMESTAMP WITH TIME ZONE", types["extracted_at"]
assert types["transcript"].startswith("STRUCT(") and types["transcript"].endswith("[]"), types["transcript"]
assert "offset_ms BIGINT" in types["transcript"], types["transcript"]
assert types["tags"] == "VARCHAR[]", types["tags"]
assert types["date"] == "DATE", types["date"]
assert types["source"] == "VARCHAR", types["source"]

# Transcripts read back as lists of structs with their roles.
turns = con.execute(
    f"SELECT count(*) FROM (SELECT unnest(transcript) AS t FROM read_parquet('{glob}', hive_partitioning=true)) "
    "WHERE t.role IN ('agent', 'customer') AND t.text IS NOT NULL"
).fetchall()[0][0]
assert turns > 0, "no transcript turn could be read"

# Partition day equals the UTC day of started_at.
bad = con.execute(
    f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning=true) "
    "WHERE date <> CAST(timezone('UTC', started_at) AS DATE)"
).fetchall()[0][0]
assert bad == 0, f"{bad} rows sit in the wrong date partition"

# pyarrow reads the same dataset with Hive partitioning.
table = ds.dataset(f"{root}/calls", format="parquet", partitioning="hive").to_table()
assert table.num_rows == rows, (table.num_rows, rows)
for path in ds.dataset(f"{root}/calls", format="parquet", partitioning="hive").files:
    meta = pq.read_metadata(path).metadata or {}
    assert meta.get(b"callsync.schema_version") == b"2", (path, meta)

print(f"interop: DuckDB {duckdb.__version__} and pyarrow read {rows} unique calls; types OK")
