"""Reads a callsync Delta table with third-party readers and prints one JSON line per reader.

usage: delta_readers.py py     TABLE_URI KEY_COLUMN   (the deltalake package and Polars)
       delta_readers.py duckdb TABLE_URI KEY_COLUMN   (DuckDB's delta_scan, extension by path)

Object-store credentials come from the environment as a JSON object of delta-rs storage
options in DELTA_STORAGE_OPTIONS (for DuckDB: an S3 secret built from the same keys).
Each line: {"reader", "rows", "ids" (the key column, sorted; `source:key` with
DELTA_KEY_WITH_SOURCE set), "by_partition" ({source/date:
[rows, xor of the rows' hashes]}), and reader-specific facts}.
"""

import glob
import hashlib
import json
import os
import sys
import time


def summary(reader, keys, sources, dates, extra):
    if os.environ.get("DELTA_KEY_WITH_SOURCE"):
        keys = [f"{s}:{k}" for k, s in zip(keys, sources)]
    by_part = {}
    for k, s, d in zip(keys, sources, dates):
        part = f"{s}/{d}"
        n, h = by_part.get(part, (0, 0))
        digest = int.from_bytes(hashlib.blake2b(str(k).encode(), digest_size=8).digest(), "big")
        by_part[part] = (n + 1, h ^ digest)
    line = {"reader": reader, "rows": len(keys), "ids": sorted(str(k) for k in keys),
            "by_partition": {p: [n, f"{h:016x}"] for p, (n, h) in sorted(by_part.items())}}
    line.update(extra)
    print(json.dumps(line), flush=True)


def files_by_partition(dt):
    out = {}
    for uri in dt.file_uris():
        parts = dict(seg.split("=", 1) for seg in uri.split("/") if "=" in seg)
        key = f"{parts.get('source')}/{parts.get('date')}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def main():
    mode, uri, key = sys.argv[1], sys.argv[2], sys.argv[3]
    opts = json.loads(os.environ.get("DELTA_STORAGE_OPTIONS", "{}")) or None
    if mode == "py":
        import deltalake
        import polars as pl

        t0 = time.perf_counter()
        dt = deltalake.DeltaTable(uri, storage_options=opts)
        open_secs = time.perf_counter() - t0
        t = dt.to_pyarrow_table(columns=[key, "source", "date"])
        # A hash of every row's every column per partition: compaction must not change one.
        rows_hash = {}
        for row in dt.to_pyarrow_table().to_pylist():
            part = f"{row['source']}/{row['date']}"
            text = json.dumps(row, default=str, sort_keys=True).encode()
            digest = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")
            rows_hash[part] = rows_hash.get(part, 0) ^ digest
        protocol = dt.protocol()
        history = dt.history()
        apps = sorted({s for s in t.column("source").to_pylist()})
        summary("deltalake", t.column(key).to_pylist(), t.column("source").to_pylist(),
                [str(d) for d in t.column("date").to_pylist()],
                {"version": dt.version(), "open_secs": open_secs,
                 "files": len(dt.file_uris()),
                 "files_by_partition": files_by_partition(dt),
                 "rows_hash": {p: f"{h:016x}" for p, h in sorted(rows_hash.items())},
                 "protocol": [protocol.min_reader_version, protocol.min_writer_version],
                 "operations": [h.get("operation") for h in history],
                 "txn": {a: dt.transaction_version(f"callsync/{a}") for a in apps}})
        lf = pl.scan_delta(uri, storage_options=opts).select([key, "source", "date"]).collect()
        summary("polars", lf[key].to_list(), lf["source"].to_list(),
                [str(d) for d in lf["date"].to_list()], {})
    elif mode == "duckdb":
        import duckdb

        con = duckdb.connect(config={"allow_unsigned_extensions": "true",
                                     "autoinstall_known_extensions": "false",
                                     "autoload_known_extensions": "false"})
        # No extension can be downloaded here: PyPI's duckdb-ext-delta and duckdb-ext-httpfs
        # (for S3) are loaded by path.
        for name in ["httpfs", "delta"]:
            ext = glob.glob(os.path.join(os.path.dirname(duckdb.__file__), "..", "duckdb_ext",
                                         "extensions", "*", "*", f"{name}.duckdb_extension"))
            assert ext, f"duckdb-ext-{name} is not installed beside duckdb"
            con.execute(f"LOAD '{os.path.abspath(ext[0])}'")
        if opts:
            endpoint = opts.get("aws_endpoint", "").replace("http://", "")
            con.execute(
                "CREATE SECRET lake (TYPE s3, KEY_ID ?, SECRET ?, REGION ?, ENDPOINT ?, "
                "URL_STYLE 'path', USE_SSL false)",
                [opts["aws_access_key_id"], opts["aws_secret_access_key"],
                 opts.get("aws_region", "us-east-1"), endpoint])
        rows = con.execute(f"SELECT {key}, source, CAST(date AS VARCHAR) FROM delta_scan(?)",
                           [uri]).fetchall()
        summary("duckdb", [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                {"version": duckdb.__version__})
    else:
        sys.exit(f"unknown mode {mode}")


main()
