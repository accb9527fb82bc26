"""Drives psycopg 3 through the sluice gateway: binary results, pipeline mode,
server-side cursors, COPY both ways, executemany, errors inside a pipeline.

Usage: SLUICE_DSN="host=... port=... dbname=... user=... password=..." python3 psycopg_check.py
Prints one JSON object with what it observed; exits non-zero on any failure.
"""
import json
import os

import psycopg

dsn = os.environ["SLUICE_DSN"]
seen = {}

with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute("CREATE TABLE pets(id int PRIMARY KEY, name text, weight float8, born date)")

    # Binary parameters and results.
    with conn.cursor(binary=True) as cur:
        cur.execute("INSERT INTO pets VALUES (%s, %s, %s, %s)", (1, "rex", 12.5, "2020-01-02"))
        cur.execute("SELECT id, name, weight, born FROM pets WHERE id = %s", (1,))
        row = cur.fetchone()
        seen["binary_row"] = [row[0], row[1], row[2], row[3].isoformat()]

    # executemany (pipelined by psycopg 3 under the hood).
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pets VALUES (%s, %s, %s, %s)",
            [(i, f"pet {i}", i * 1.5, "2021-03-04") for i in range(2, 52)],
        )

    # Pipeline mode with an error in the middle: the rest of the batch fails, the
    # connection stays usable.
    try:
        with conn.pipeline():
            conn.execute("INSERT INTO pets VALUES (100, 'a', 1, '2020-01-01')")
            conn.execute("INSERT INTO pets VALUES (1, 'duplicate', 1, '2020-01-01')")
            conn.execute("INSERT INTO pets VALUES (101, 'b', 1, '2020-01-01')")
    except psycopg.errors.UniqueViolation:
        seen["pipeline_error"] = "23505"
    seen["count_after_pipeline"] = conn.execute("SELECT count(*) FROM pets").fetchone()[0]

    # Explicitly prepared statements (named, reused).
    for i in range(3):
        conn.execute("SELECT name FROM pets WHERE id = %s", (i + 1,), prepare=True)

    # Server-side cursor (DECLARE / FETCH in a transaction).
    with conn.transaction():
        with conn.cursor(name="walk") as cur:
            cur.itersize = 7
            cur.execute("SELECT id FROM pets ORDER BY id")
            seen["server_side_rows"] = sum(1 for _ in cur)

    # COPY out and in.
    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT id, name FROM pets ORDER BY id) TO STDOUT") as copy:
            seen["copy_out_rows"] = sum(1 for _ in copy.rows())
        with cur.copy("COPY pets(id, name) FROM STDIN") as copy:
            for i in range(1000, 1500):
                copy.write_row((i, f"copied {i}"))
    seen["final_count"] = conn.execute("SELECT count(*) FROM pets").fetchone()[0]

print(json.dumps(seen))
