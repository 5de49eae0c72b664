"""Runs recstack's Flink SQL window aggregate over a file of events in a local Flink
mini-cluster (PyPI apache-flink, Java 17) and writes one JSON line per (item, window).

Usage: aggregate.py SPEC.json
SPEC: {"columns": <the events table's columns and watermark>,
       "query": <the SELECT the operator deploys>,
       "events": <absolute path of a JSON-lines file of events>,
       "out": <path of the JSON-lines result>}

The columns and query come from the operator (`recstack_operator::render::EVENT_COLUMNS`,
`window_query`), so this runs exactly the SQL a FlinkDeployment runs; only the source table
is a file instead of the Kafka topic. Streaming mode: a bounded file ends the job by itself,
with Flink's final watermark closing the last windows.
"""

import json
import sys
import time
from datetime import timezone

from pyflink.table import EnvironmentSettings, TableEnvironment


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    started = time.time()
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", "1")
    env.execute_sql(
        f"""CREATE TABLE events (
{spec["columns"]}
) WITH (
  'connector' = 'filesystem',
  'path' = 'file://{spec["events"]}',
  'format' = 'json'
)"""
    )
    rows = 0
    with open(spec["out"], "w") as out, env.execute_sql(spec["query"]).collect() as results:
        for r in results:
            # TIMESTAMP(3) has no zone; the events' times are UTC.
            end_ms = int(r[1].replace(tzinfo=timezone.utc).timestamp() * 1000)
            out.write(
                json.dumps(
                    {
                        "item_id": r[0],
                        "window_end_ms": end_ms,
                        "impressions": r[2],
                        "clicks": r[3],
                        "plays": r[4],
                        "likes": r[5],
                        "ctr": float(r[6]),
                    }
                )
                + "\n"
            )
            rows += 1
    print(f"flink: {rows} item windows in {time.time() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
