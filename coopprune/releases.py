"""Finding model releases to prune: checkpoint folders under a local folder or an S3 prefix, and
Hugging Face repos at a revision. Each release has a fingerprint of its files (or commit), so a
watcher prunes every release exactly once, whatever it is called.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from coopprune.errors import CoopPruneError

CHECKPOINT_FILES = ("config.json",)
WEIGHT_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class Release:
    name: str  # e.g. the checkpoint folder's name or the hub repo id
    source: str  # what load_model takes: a local folder or a hub id
    revision: str | None
    fingerprint: str  # sha256 of config + weight files, or the hub commit


def is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir())


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the config and weight files (names and contents), streamed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.name in CHECKPOINT_FILES or p.suffix in WEIGHT_SUFFIXES):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def local_releases(root: str | Path) -> list[Release]:
    """The folder itself if it is a checkpoint, else each checkpoint folder directly inside it."""
    root = Path(root)
    if not root.is_dir():
        raise CoopPruneError(f"watched folder does not exist: {root}")
    folders = [root] if is_checkpoint(root) else sorted(p for p in root.iterdir() if p.is_dir() and is_checkpoint(p))
    return [Release(p.name, str(p.resolve()), None, folder_fingerprint(p)) for p in folders]


def s3_releases(uri: str, cache_dir: str | Path) -> list[Release]:
    """Checkpoint prefixes under ``s3://bucket/prefix``, downloaded once into ``cache_dir``.

    Endpoint and credentials come from the usual AWS variables (``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL`` for S3-compatible servers). The fingerprint is taken from the files
    as downloaded, so it matches the same checkpoint found in a local folder.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    match = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    if not match:
        raise CoopPruneError(f"not an S3 uri: {uri}")
    bucket, prefix = match.group(1), match.group(2).rstrip("/")
    s3 = boto3.client("s3")
    try:
        keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for obj in page.get("Contents", [])]
    except (BotoCoreError, ClientError) as exc:
        raise CoopPruneError(f"cannot list {uri}: {exc}") from None
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.rsplit("/", 1)[0] if "/" in key else "", []).append(key)
    releases = []
    for folder_key, members in sorted(groups.items()):
        if not any(k.endswith("/config.json") or k == "config.json" for k in members):
            continue
        local = Path(cache_dir) / bucket / folder_key
        local.mkdir(parents=True, exist_ok=True)
        for key in members:
            target = local / key.rsplit("/", 1)[-1]
            if not target.exists():
                tmp = target.with_name(target.name + ".part")
                s3.download_file(bucket, key, str(tmp))
                tmp.replace(target)
        if is_checkpoint(local):
            releases.append(Release(Path(folder_key).name or bucket, str(local), None, folder_fingerprint(local)))
    return releases


def hub_release(repo_id: str, revision: str = "main") -> Release:
    """A hub repo at a revision, fingerprinted by its commit (needs the network)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except Exception as exc:  # the hub client raises many types; the user needs the one line
        raise CoopPruneError(f"cannot reach {repo_id}@{revision} on the Hugging Face hub: {exc}") from None
    return Release(repo_id.split("/")[-1], repo_id, info.sha, f"hub:{repo_id}@{info.sha}")


def find_releases(source: str, cache_dir: str | Path) -> list[Release]:
    """``s3://bucket/prefix``, ``hf:owner/name[@revision]``, or a local folder."""
    if source.startswith("s3://"):
        return s3_releases(source, cache_dir)
    if source.startswith("hf:"):
        repo, _, revision = source[3:].partition("@")
        return [hub_release(repo, revision or "main")]
    return local_releases(source)
