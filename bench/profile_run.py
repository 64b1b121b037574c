"""Where the time of one ``make run`` goes, per task, read from the Prefect run itself.

Reads the latest ``prune_release`` flow run from the Prefect database of ``PREFECT_HOME``
(``make run`` uses ``.prefect``), sums the task runs by task (the mask shards together) and
saves the table. Run ``make run`` first; this measures nothing itself.

    PREFECT_HOME=.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false python bench/profile_run.py

(without the second variable Prefect's telemetry may print a "database is locked" traceback
while the table is read; the table is still right)
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort

RESULTS = Path(__file__).parent / "results"


async def latest_profile(flow_name: str = "prune_release") -> dict:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])), sort=FlowRunSort.START_TIME_DESC, limit=1
        )
        if not runs:
            raise SystemExit(f"no {flow_name} run in this PREFECT_HOME: run `make run` first")
        run = runs[0]
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    per_task: dict[str, dict] = defaultdict(lambda: {"runs": 0, "seconds": 0.0, "start": None})
    for t in tasks:
        name = t.name.rsplit("-", 1)[0]  # "evaluate_shard-3" -> "evaluate_shard"
        row = per_task[name]
        row["runs"] += 1
        row["seconds"] += t.total_run_time.total_seconds()
        row["start"] = min(filter(None, [row["start"], t.start_time]), default=None)
    total = run.total_run_time.total_seconds()
    rows = sorted(
        ({"task": name, **{k: v for k, v in row.items() if k != "start"}, "start": row["start"]} for name, row in per_task.items()),
        key=lambda r: (r["start"] is None, r["start"]),
    )
    return {"flow_run": run.name, "state": run.state_name, "total_seconds": total, "date": str(run.start_time),
            "prefect_home": os.environ.get("PREFECT_HOME", "~/.prefect"),
            "tasks": [{"task": r["task"], "runs": r["runs"], "seconds": round(r["seconds"], 1),
                       "share": round(r["seconds"] / total, 3) if total else None} for r in rows]}


def main() -> None:
    profile = asyncio.run(latest_profile())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "run_profile.json").write_text(json.dumps(profile, indent=2) + "\n")
    lines = [f"Flow run {profile['flow_run']} ({profile['state']}, {profile['date'][:19]}, read from "
             f"{profile['prefect_home']}): {profile['total_seconds'] / 60:.1f} min in all", "", "| task | runs | seconds | share |", "|---|---|---|---|"]
    lines += [f"| {t['task']} | {t['runs']} | {t['seconds']:.0f} | {t['share']:.0%} |" for t in profile["tasks"]]
    (RESULTS / "run_profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), f"\n(saved {time.strftime('%H:%M:%S')})")


if __name__ == "__main__":
    main()
