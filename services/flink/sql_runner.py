"""Runs a Flink SQL script: the entry point of recstack's Flink engine job.

In the cluster, Flink's PythonDriver starts it in the JobManager (the FlinkDeployment's
`job.args`: `-py sql_runner.py SCRIPT.sql`); in tests, the same file runs the operator's
rendered SQL in a local mini-cluster.

Usage: sql_runner.py SCRIPT.sql [--bounded TABLE] [--jars FILE.jar,...] [--parallelism N]

The script holds `SET 'key' = 'value';` statements, DDL, single INSERTs and
`EXECUTE STATEMENT SET BEGIN INSERT ...; INSERT ...; END;` — Flink SQL client syntax.
Statements end at a `;` outside quotes; `--` comments are dropped.

--bounded TABLE  makes the Kafka source table TABLE stop at the offsets it finds at start
                 (`scan.bounded.mode = latest-offset`), so the job ends: Flink's final
                 watermark then closes every window. For tests and replays.
--jars           connector jars for a local run (the job image has them in /opt/flink/lib).
"""

import argparse
import sys
import time

from pyflink.table import EnvironmentSettings, TableEnvironment


def statements(script: str) -> list[str]:
    """Splits a SQL script at `;` outside single-quoted literals, dropping `--` comments."""
    out, current, quoted, i = [], [], False, 0
    while i < len(script):
        c = script[i]
        if quoted:
            current.append(c)
            if c == "'":
                # '' inside a literal is an escaped quote.
                if script[i + 1 : i + 2] == "'":
                    current.append("'")
                    i += 1
                else:
                    quoted = False
        elif c == "'":
            quoted = True
            current.append(c)
        elif script.startswith("--", i):
            while i < len(script) and script[i] != "\n":
                i += 1
            continue
        elif c == ";":
            out.append("".join(current).strip())
            current = []
        else:
            current.append(c)
        i += 1
    tail = "".join(current).strip()
    if tail:
        out.append(tail)
    return [s for s in out if s]


def words(statement: str, n: int) -> list[str]:
    return [w.upper() for w in statement.split()[:n]]


def run(script: str, bounded: str | None, jars: list[str], parallelism: int | None) -> None:
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    if jars:
        config.set("pipeline.jars", ";".join(f"file://{j}" for j in jars))
    if parallelism:
        config.set("parallelism.default", str(parallelism))
    results = []
    inserts = None  # the open statement set's INSERTs
    for statement in statements(script):
        head = words(statement, 4)
        if head[:3] == ["EXECUTE", "STATEMENT", "SET"]:
            # The first INSERT follows BEGIN, before the first `;`.
            body = statement.split(None, 3)[3] if len(head) == 4 else ""
            if not body.upper().startswith("BEGIN"):
                raise SystemExit(f"sql_runner: expected BEGIN after EXECUTE STATEMENT SET: {statement[:80]!r}")
            inserts = [body[len("BEGIN") :].strip()]
        elif inserts is not None:
            if head == ["END"]:
                statement_set = env.create_statement_set()
                for insert in inserts:
                    statement_set.add_insert_sql(insert)
                results.append(statement_set.execute())
                inserts = None
            else:
                inserts.append(statement)
        elif head[:1] == ["SET"]:
            key, _, value = statement[3:].partition("=")
            config.set(key.strip().strip("'"), value.strip().strip("'"))
        else:
            results.append(env.execute_sql(statement))
            if bounded and head[:2] == ["CREATE", "TABLE"] and statement.split()[2].strip("`") == bounded:
                env.execute_sql(f"ALTER TABLE `{bounded}` SET ('scan.bounded.mode' = 'latest-offset')")
    if inserts is not None:
        raise SystemExit("sql_runner: EXECUTE STATEMENT SET without END")
    jobs = [r for r in results if r.get_job_client() is not None]
    print(f"sql_runner: submitted {len(jobs)} job(s)", file=sys.stderr, flush=True)
    if bounded:
        for r in jobs:
            r.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("script")
    parser.add_argument("--bounded", metavar="TABLE")
    parser.add_argument("--jars", default="")
    parser.add_argument("--parallelism", type=int)
    args = parser.parse_args()
    started = time.time()
    with open(args.script) as f:
        script = f.read()
    run(script, args.bounded, [j for j in args.jars.split(",") if j], args.parallelism)
    if args.bounded:
        print(f"sql_runner: done in {time.time() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
