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
    from tasks.registry import already_pruned, registered_model_name

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


@flow(name="watch_releases", log_prints=False)
def watch_releases(sources: list[str], params_file: str = "params.yaml") -> list[dict[str, Any]]:
    """Prune and register each release not yet in the registry; returns what was done per release."""
    base = Params.load(params_file)
    if not base.registry.enabled:
        raise CoopPruneError("watch_releases needs registry.enabled: the registry is how it remembers releases")
    cache = str(Path(base.output_dir) / "releases" / "downloads")
    done = []
    for source in sources:
        for release in find(source, cache):
            params = release_params(base, release)
            if is_pruned(params, release):
                get_run_logger().info("%s (%s): already pruned", release.name, release.fingerprint[-12:])
                done.append({"release": release.name, "fingerprint": release.fingerprint, "pruned": False})
                continue
            summary = prune_release(params)
            done.append({"release": release.name, "fingerprint": release.fingerprint, "pruned": True,
                         "registry": summary.get("registry")})
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", required=True, help="folder, s3://bucket/prefix or hf:org/name@rev")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--serve", action="store_true", help="serve as a deployment on --cron (needs a Prefect server)")
    parser.add_argument("--cron", default="0 3 * * *")
    args = parser.parse_args(argv)
    reap_and_say()
    if args.serve:
        watch_releases.serve(name="watch-releases", cron=args.cron,
                             parameters={"sources": args.source, "params_file": args.params})
        return 0
    try:
        Params.load(args.params)  # fail on bad params before starting Prefect
        for row in watch_releases(args.source, args.params):
            print(row)
    except CoopPruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
