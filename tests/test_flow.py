"""prune_release on a real (ephemeral) Prefect server with a tiny model: threads and a local Dask
cluster give the same mask dataset; a failing shard fails the flow by name; a rerun repeats nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_zeroshot import data, fake_home  # noqa: E402,F401  (fixtures: fake benchmark data)
from tiny import write_text  # noqa: E402

from coopprune import pipeline  # noqa: E402
from coopprune.config import Params  # noqa: E402
from coopprune.dataset import MaskDataset  # noqa: E402
from coopprune.errors import CoopPruneError  # noqa: E402
from coopprune.gguf_io import read_facts  # noqa: E402


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory) -> Path:
    return write_text(tmp_path_factory.mktemp("eval") / "eval.jsonl", n_docs=40)


def flow_params(tmp_path: Path, tiny_checkpoint: Path, text_file: Path, eval_text: Path, **sections) -> Params:
    values = {
        "model": {"source": str(tiny_checkpoint)},
        "calibration": {"source": str(text_file), "n_windows": 4, "window": 16, "batch_size": 4},
        "sampling": {"remove": [1, 2, 3], "per_stratum": 4, "shard_size": 3},
        "surrogate": {"epochs": 60},
        "prune": {"method": "semivalue", "remove": 2, "bootstrap": 0},
        "evaluation": {"text": str(eval_text), "window": 16, "max_windows": 8},
        "benchmark": {"tasks": [], "speed": True, "new_tokens": 4, "speed_pairs": 2},
        "registry": {"enabled": False},
        "output_dir": str(tmp_path / "run"),
    }
    for key, value in sections.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return Params.from_dict(values)


def dataset_values(path: Path) -> dict[str, float]:
    return {"".join("1" if b else "0" for b in r["mask"]): r["utility"] for r in MaskDataset.open(path).rows()}


@pytest.mark.usefixtures("data")
def test_flow_threads_and_dask_give_the_same_dataset(prefect_server, tmp_path, tiny_checkpoint, text_file, eval_text,
                                                     monkeypatch):
    """Threads run: the whole flow incl. zero-shot (fake data) and MLflow; Dask run: the same masks."""
    from flows.prune_release import run
    from coopprune.tracking.registry import load_registered

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    threads = flow_params(tmp_path / "threads", tiny_checkpoint, text_file, eval_text, flow={"workers": 2},
                          benchmark={"tasks": ["piqa", "arc_easy"], "limit": 4},
                          registry={"enabled": True, "model_name": "tiny-pruned"}, export={"gguf": True},
                          stability={"seeds": [1]})
    summary = run(threads)
    assert summary["registry"]["version"] == "1" and summary["registry"]["promotion"]["promoted"]
    assert set(summary["benchmark"]["pruned"]["zero_shot"]["tasks"]) == {"piqa", "arc_easy"}
    assert "pruned_zero_shot_mean" in summary["metrics"]
    champion = load_registered("models:/tiny-pruned@champion", tmp_path / "champion")
    assert (champion / "pruning.json").is_file()
    from mlflow import MlflowClient

    logged = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["registry"]["run_id"])
    assert logged.info.run_name == f"llama {threads.prune.method} k=2"  # the model and the method
    assert logged.data.tags["base_model"] == str(tiny_checkpoint)
    # the run spans the flow (it is opened at register time with the flow's start), not the logging
    assert (logged.info.end_time - logged.info.start_time) / 1000 >= 0.5 * summary["seconds"]
    used = {i.tags[0].value: i.dataset for i in logged.inputs.dataset_inputs}
    assert set(used) == {"calibration", "evaluation", "masks"}
    assert used["calibration"].digest == summary["data"]["calibration"]["fingerprint"][:36]
    gguf = Path(summary["gguf"]["path"])  # a checkpoint base: exported (f16), logged beside the model
    assert gguf.name == "llama-pruned.f16.gguf" and "exported" in summary["gguf"]["how"]
    assert read_facts(gguf)["removed_layers"] == summary["pruned"]["removed_layers"]
    version = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_model_version("tiny-pruned", "1")
    assert version.tags["gguf"] == f"gguf/{gguf.name}" and version.tags["base_model"] == str(tiny_checkpoint)
    assert [f.path for f in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(logged.info.run_id, "gguf")] \
        == [version.tags["gguf"]]
    out = Path(threads.output_dir)
    assert summary["mask_dataset"]["rows"] == 12
    assert len(summary["pruned"]["removed_layers"]) == 2
    assert (out / "pruned" / "contributions.png").is_file()
    assert (out / "surrogate" / "surrogate.safetensors").is_file()
    assert summary["surrogate"]["metrics"]["overall"]["spearman"] is not None
    bench = json.loads((out / "benchmark" / "pruned.json").read_text())
    assert bench["perplexity"]["window"] == 16
    assert "speed" not in bench  # timed with the base model, in interleaved pairs
    speed = json.loads((out / "benchmark" / "speed.json").read_text())
    assert speed["order"] == ["base", "pruned", "pruned", "base"] and set(speed["summary"]) == {"1", "8"}
    assert summary["metrics"]["speedup_bs1"] == pytest.approx(speed["summary"]["1"]["speedup"], abs=1e-4)
    assert summary["metrics"]["speedup_bs1_min"] <= summary["metrics"]["speedup_bs1"] <= summary["metrics"]["speedup_bs1_max"]
    assert not any("tokens_per_s_batch" in key for key in summary["metrics"])
    # the release card: a file under the run's output, logged with the run, its summary the version's description
    from coopprune.card import card_summary

    assert summary["card"] == str(out / "card.html") and "llama-pruned.f16.gguf" in (out / "card.html").read_text()
    assert version.description == card_summary(out) and "interleaved timing pairs" in version.description
    assert version.tags["card"] == "card/card.html" and float(version.tags["speedup_bs1"]) > 0
    # the seed spread (stability.seeds: [1]): after the prune, in the summary, the metrics, the tags and the card
    spread = summary["stability"]
    assert spread["seeds"] == [0, 1] and spread["sets"]["0"] == sorted(summary["pruned"]["removed_layers"])
    assert summary["metrics"]["calibration_seeds"] == 2
    assert summary["metrics"]["calibration_seed_distinct_sets"] == spread["distinct_sets"]
    assert version.tags["calibration_seed_spread"].startswith(f"2 seeds, {spread['distinct_sets']} set")
    assert logged.data.tags["calibration_seed_spread"] == version.tags["calibration_seed_spread"]
    assert "other calibration draw" in version.description
    assert version.tags["speedup_bs1_range"].endswith("over 2 interleaved pairs")
    assert [f.path for f in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(logged.info.run_id, "card")] \
        == ["card/card.html"]
    assert json.loads((out / "summary.json").read_text())["pruned"]["removed_layers"] == summary["pruned"]["removed_layers"]

    dask = flow_params(tmp_path / "dask", tiny_checkpoint, text_file, eval_text,
                       flow={"task_runner": "dask", "workers": 2}, benchmark={"speed": False})
    summary_dask = run(dask)
    assert dataset_values(Path(dask.output_dir) / "masks") == dataset_values(out / "masks")
    assert summary_dask["pruned"]["removed_layers"] == summary["pruned"]["removed_layers"]


def test_failing_shard_fails_the_flow_by_name(prefect_server, tmp_path, tiny_checkpoint, text_file, eval_text,
                                              monkeypatch):
    from flows.prune_release import run

    params = flow_params(tmp_path, tiny_checkpoint, text_file, eval_text, flow={"retries": 1})
    real = pipeline.evaluate_shard
    attempts = []

    def flaky(params, shard, *args, **kwargs):
        if shard == 2:
            attempts.append(shard)
            raise RuntimeError("worker lost")
        return real(params, shard, *args, **kwargs)

    monkeypatch.setattr(pipeline.store, "evaluate_shard", flaky)  # where tasks.prune_release looks it up
    with pytest.raises(CoopPruneError, match=r"mask shards \[2\] failed"):
        run(params)
    assert attempts == [2, 2]  # tried, retried once
    assert not (Path(params.output_dir) / "pruned").exists()
    assert not (Path(params.output_dir) / "summary.json").exists()


def test_rerun_after_interruption_repeats_no_evaluation(prefect_server, tmp_path, tiny_checkpoint, text_file,
                                                        eval_text):
    from flows.prune_release import run

    params = flow_params(tmp_path, tiny_checkpoint, text_file, eval_text)
    pipeline.plan_sweep(params)
    assert pipeline.evaluate_shard(params, 0, progress=False) == 3  # the run that was killed got this far
    before = {r["mask_id"]: r for r in MaskDataset.open(pipeline.masks_dir(params)).rows()}
    run(params)
    after = {r["mask_id"]: r for r in MaskDataset.open(pipeline.masks_dir(params)).rows()}
    assert len(after) >= 12 and all(after[i] == row for i, row in before.items())  # kept, not re-evaluated


def test_invalid_params_rejected_before_any_model_is_loaded(tmp_path, capsys):
    from flows.prune_release import main

    bad = tmp_path / "params.yaml"
    bad.write_text("sampling:\n  per_stratum: many\n")
    assert main(["--params", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "sampling.per_stratum" in err and len(err.strip().splitlines()) == 1


def test_unreachable_mlflow_fails_at_register_and_keeps_the_artifacts(prefect_server, tmp_path, tiny_checkpoint,
                                                                       text_file, eval_text, monkeypatch):
    from flows.prune_release import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    params = flow_params(tmp_path, tiny_checkpoint, text_file, eval_text, registry={"enabled": True},
                         benchmark={"speed": False})
    with pytest.raises(CoopPruneError, match="cannot reach the MLflow tracking server at http://127.0.0.1:9"):
        run(params)
    out = Path(params.output_dir)
    assert (out / "pruned" / "config.json").is_file() and (out / "metrics.json").is_file()

    # the registry is back: the rerun registers without a new evaluation or a new benchmark
    rows = len(MaskDataset.open(out / "masks"))
    benchmarked = {p.name: p.stat().st_mtime_ns for p in (out / "benchmark").glob("*.json")}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    summary = run(params)
    assert summary["registry"]["version"] == "1"
    assert len(MaskDataset.open(out / "masks")) == rows
    assert {p.name: p.stat().st_mtime_ns for p in (out / "benchmark").glob("*.json")} == benchmarked


def test_killed_flow_resumes_without_losing_or_repeating_a_mask(tmp_path, tiny_checkpoint, text_file, eval_text):
    """SIGKILL the flow process once the first shard is sealed; the rerun evaluates exactly the rest,
    and first stops the ephemeral Prefect server the killed run left behind."""
    import signal
    import subprocess
    import sys
    import time

    from flows.orphans import orphaned_servers

    params = flow_params(tmp_path, tiny_checkpoint, text_file, eval_text, benchmark={"speed": False},
                         sampling={"remove": [1, 2, 3], "per_stratum": 6, "shard_size": 3})
    path = params.save(tmp_path / "params.yaml")
    home = tmp_path / "prefect"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows.prune_release", "--params", str(path)]
    masks = Path(params.output_dir) / "masks"
    try:
        proc = subprocess.Popen(command, env=env, cwd=Path(__file__).parent.parent,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while not list(masks.glob("shard-00000.parquet")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # the flow process only, as an OOM kill would
        proc.wait()
        before = {r["mask_id"]: r for r in MaskDataset.open(masks).rows()}
        assert 3 <= len(before) < 18, len(before)  # killed mid-sweep
        assert len(orphaned_servers(str(home.resolve()))) == 1  # its ephemeral server survived it

        done = subprocess.run(command, env=env, cwd=Path(__file__).parent.parent, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "stopped 1 ephemeral Prefect server(s) left by killed runs" in done.stderr
        assert orphaned_servers(str(home.resolve())) == []
        rows = MaskDataset.open(masks).rows()
        planned = [r for r in rows if r["seed"] >= 0]
        assert sorted(r["mask_id"] for r in planned) == list(range(18))  # every planned mask exactly once
        after = {r["mask_id"]: r for r in rows}
        assert all(after[i] == row for i, row in before.items())  # nothing evaluated twice
    finally:
        for server in orphaned_servers(str(home.resolve())):
            server.kill()


def test_a_healed_model_is_benchmarked_and_registered_as_its_own_version(prefect_server, tmp_path, tiny_checkpoint,
                                                                          text_file, eval_text, monkeypatch):
    from mlflow import MlflowClient

    from flows.prune_release import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = flow_params(tmp_path, tiny_checkpoint, text_file, eval_text, benchmark={"speed": False},
                         heal={"enabled": True, "data": str(text_file), "steps": 2, "seq_len": 16, "batch_size": 2,
                               "grad_accum": 1, "save_every": 1},
                         registry={"enabled": True, "model_name": "tiny-pruned", "rule": "perplexity"},
                         export={"gguf": True})
    summary = run(params)
    healed = Path(summary["healed"]["path"])
    assert (healed / "healing.json").is_file() and summary["healed"]["steps"] == 2
    assert "healed_perplexity" in summary["metrics"] and Path(summary["healed"]["gguf"]["path"]).parent.name == "gguf-healed"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    pruned_v, healed_v = (client.get_model_version("tiny-pruned", v) for v in ("1", "2"))
    assert "healed" not in pruned_v.tags and healed_v.tags["healed"] == "true" and healed_v.tags["heal_steps"] == "2"
    assert float(healed_v.tags["perplexity"]) == pytest.approx(summary["metrics"]["healed_perplexity"])
    assert healed_v.tags["promotion.decision"] in {"promoted", "kept champion"}  # judged against the unhealed one
    assert client.get_run(healed_v.run_id).info.run_name.endswith(" healed")
    assert summary["registry"]["healed"]["version"] == "2"
    from coopprune.card import card_summary

    assert healed_v.description == card_summary(params.output_dir, "healed") and "(healed)" in healed_v.description
    assert healed_v.tags["card"] == "card/card-healed.html" and summary["healed"]["card"].endswith("card-healed.html")

    mtime = (healed / "healing.json").stat().st_mtime
    run(params)  # a rerun trains nothing again
    assert (healed / "healing.json").stat().st_mtime == mtime


def test_a_patched_model_is_benchmarked_exported_and_registered_before_healing(prefect_server, tmp_path, tiny_checkpoint,
                                                                               text_file, eval_text, monkeypatch):
    from mlflow import MlflowClient

    from flows.prune_release import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = flow_params(tmp_path, tiny_checkpoint, text_file, eval_text, benchmark={"speed": False},
                         patch={"enabled": True, "n_windows": 4},
                         heal={"enabled": True, "data": str(text_file), "steps": 1, "seq_len": 16, "batch_size": 2,
                               "grad_accum": 1, "save_every": 1},
                         registry={"enabled": True, "model_name": "tiny-pruned", "rule": "perplexity"},
                         export={"gguf": True})
    summary = run(params)
    patched = Path(summary["patched"]["path"])
    entry = json.loads((patched / "pruning.json").read_text())["params"]["patch"]
    assert patched.name == "patched" and entry["objective"] == "lstsq"
    assert "patched_perplexity" in summary["metrics"] and Path(summary["patched"]["gguf"]["path"]).parent.name == "gguf-patched"
    healed = json.loads((Path(summary["healed"]["path"]) / "pruning.json").read_text())
    assert healed["params"]["patch"]["key"] == entry["key"]  # healing started from the patched model
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    pruned_v, patched_v, healed_v = (client.get_model_version("tiny-pruned", v) for v in ("1", "2", "3"))
    assert "patched" not in pruned_v.tags and patched_v.tags["patched"] == "true" and "healed" not in patched_v.tags
    assert float(patched_v.tags["perplexity"]) == pytest.approx(summary["metrics"]["patched_perplexity"])
    assert client.get_run(patched_v.run_id).info.run_name.endswith(" patched") and healed_v.tags["healed"] == "true"
    assert summary["registry"]["patched"]["version"] == "2"
