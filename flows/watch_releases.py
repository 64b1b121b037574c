"""``watch_releases``: prune every new release of the watched models, exactly once.

    python -m flows.watch_releases --source models/ --source s3://bucket/releases --source hf:org/name@main
    python -m flows.watch_releases --source models/ --serve --cron "0 3 * * *"   # with `prefect server start`

A release counts as pruned when the registry holds a version tagged with its fingerprint (the
hash of its config and weight files, or its hub commit), so a renamed copy is not pruned again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from coopprune.config import Params
from coopprune.errors import CoopPruneError
from coopprune.releases import Release, find_releases
from flows.prune_release import prune_release, reap_and_say


@task(name="find-releases", cache_policy=NO_CACHE)
def find(source: str, cache_dir: str) -> list[Release]:
    return find_releases(source, cache_dir)


@task(name="is-pruned", cache_policy=NO_CACHE)
def is_pruned(params: Params, release: Release) -> bool:
    from coopprune.tracking.registry import already_pruned, registered_model_name

    name = params.registry.model_name or registered_model_name(params.model.source)
    return already_pruned(name, release.fingerprint, tag="release_fingerprint")


def release_params(base: Params, release: Release) -> Params:
    """The base params with this release as the model, its own output folder and registered name."""
    data = base.model_dump()
    data["model"] = {**data["model"], "source": release.source, "revision": release.revision}
    data["output_dir"] = str(Path(base.output_dir) / "releases" / f"{release.name}-{release.fingerprint[-12:]}")
    data["registry"] = {**data["registry"], "model_name": base.registry.model_name or f"{release.name}-pruned"}
    data["release"] = {"name": release.name, "fingerprint": release.fingerprint}
    return Params.from_dict(data)


def _owner() -> str:
    """Who holds a claim: host, process and flow run."""
    import os
    import socket

    from prefect.runtime import flow_run

    return f"{socket.gethostname()}:{os.getpid()}:{flow_run.id or '-'}"


@flow(name="watch_releases", log_prints=False)
def watch_releases(sources: list[str], params_file: str = "params.yaml") -> list[dict[str, Any]]:
    """Prune and register each release not yet in the registry; returns what was done per release.

    Each release is pruned under a registry claim, so overlapping runs (a tick while the last one
    still runs, two workers) never prune one twice; the registry is checked again once the claim
    is held. A release that fails does not stop the others; the run then fails naming it, nothing
    is marked done for it, and the next run tries it again."""
    from coopprune.tracking.registry import claim_release

    base = Params.load(params_file)
    if not base.registry.enabled:
        raise CoopPruneError("watch_releases needs registry.enabled: the registry is how it remembers releases")
    cache = str(Path(base.output_dir) / "releases" / "downloads")
    logger = get_run_logger()
    done, failed = [], []
    for source in sources:
        for release in find(source, cache):
            params = release_params(base, release)
            row = {"release": release.name, "fingerprint": release.fingerprint, "pruned": False}
            if is_pruned(params, release):
                logger.info("%s (%s): already pruned", release.name, release.fingerprint[-12:])
                done.append(row)
                continue
            with claim_release(release.fingerprint, owner=_owner()) as mine:
                if not mine:
                    logger.info("%s (%s): being pruned by another run", release.name, release.fingerprint[-12:])
                    done.append({**row, "claimed_elsewhere": True})
                    continue
                if is_pruned(params, release):  # finished by another run before this one got the claim
                    done.append(row)
                    continue
                try:
                    # Params is validated already; Prefect's re-validation fails when a deployment
                    # loads this flow from source (the annotation is not resolvable there)
                    summary = prune_release.with_options(validate_parameters=False)(params)
                except Exception as exc:  # noqa: BLE001 - reported below; the other releases still run
                    logger.error("%s (%s): pruning failed: %s", release.name, release.fingerprint[-12:], exc)
                    failed.append(f"{release.name} ({exc})")
                    done.append({**row, "failed": str(exc)})
                    continue
            done.append({**row, "pruned": True, "registry": summary.get("registry")})
    if failed:
        raise CoopPruneError(f"{len(failed)} release(s) failed to prune and will be retried: " + "; ".join(failed))
    return done


DEPLOYMENT = "watch-releases"


def serve(sources: list[str], params_file: str, *, cron: str | None = "0 3 * * *", interval: float | None = None) -> None:
    """The watcher as a scheduled deployment on the Prefect server ``PREFECT_API_URL`` names, at
    most one run at a time: a tick that comes while a run is still going is cancelled (the running
    one, or the next tick, picks up what it would have found); the claims in the registry guard
    overlap between separate deployments or workers."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType

    watch_releases.serve(
        name=DEPLOYMENT, cron=cron, interval=interval,
        parameters={"sources": list(sources), "params_file": str(params_file)},
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        description="Prune and register every new release of the watched models, exactly once.",
        entrypoint_type=EntrypointType.MODULE_PATH,  # runs import flows.watch_releases (a file path loses Params)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", required=True, help="folder, s3://bucket/prefix or hf:org/name@rev")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--serve", action="store_true", help="serve as a scheduled deployment (needs a Prefect server)")
    parser.add_argument("--cron", default="0 3 * * *", help="the schedule (default: daily at 03:00)")
    parser.add_argument("--interval", type=float, default=None, help="seconds between runs, instead of --cron")
    args = parser.parse_args(argv)
    reap_and_say()
    try:
        Params.load(args.params)  # fail on bad params before starting Prefect
        if args.serve:
            serve(args.source, args.params, cron=None if args.interval else args.cron, interval=args.interval)
            return 0
        for row in watch_releases(args.source, args.params):
            print(row)
    except CoopPruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
