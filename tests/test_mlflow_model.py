"""The registered checkpoint as an MLflow transformers model: pyfunc generates from it, its model/
folder is still a plain checkpoint, the registry and `load_registered` see through the layout, and
(where Chromium is installed) the MLflow UI's version page shows aliases, scores, lineage, schema."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import LoggedModelStatus
from test_quantize import quantized_checkpoint  # noqa: F401  (fixture)
from test_registry import REMOVED, ZS, pruned, template_db, uri  # noqa: F401  (fixtures)
from transformers import AutoModelForCausalLM, AutoTokenizer

from coopprune.errors import CoopPruneError
from coopprune.tracking import registry
from coopprune.tracking.mlflow_model import CHECKPOINT_DIR, checkpoint_in, save_mlflow_model


@pytest.fixture(scope="module")
def mlflow_model(pruned, tmp_path_factory) -> Path:  # noqa: F811
    return save_mlflow_model(pruned, tmp_path_factory.mktemp("mlflow_model") / "model")


def test_the_flavor_generates_and_its_model_folder_is_a_plain_checkpoint(mlflow_model, pruned):  # noqa: F811
    info = mlflow.models.Model.load(str(mlflow_model / "MLmodel"))
    assert info.flavors["transformers"]["task"] == "text-generation"
    assert json.loads(info.metadata["coopprune.removed_layers"]) == REMOVED
    assert info.signature.params.params[0].name == "max_new_tokens"
    out = mlflow.pyfunc.load_model(str(mlflow_model)).predict(["The quick"], params={"max_new_tokens": 3})
    assert len(out) == 1 and isinstance(out[0], str)

    inner = checkpoint_in(mlflow_model)
    assert inner == mlflow_model / CHECKPOINT_DIR and checkpoint_in(pruned) == pruned
    assert (inner / "pruning.json").read_text() == (pruned / "pruning.json").read_text()
    assert (inner / "surrogate" / "metrics.json").is_file()  # the reports travel too
    model = AutoModelForCausalLM.from_pretrained(inner)
    assert AutoTokenizer.from_pretrained(inner).vocab_size > 0
    assert model.config.num_hidden_layers == AutoModelForCausalLM.from_pretrained(pruned).config.num_hidden_layers


def test_a_rewrite_replaces_the_folder_whole(mlflow_model, pruned, tmp_path):  # noqa: F811
    dst = shutil.copytree(mlflow_model, tmp_path / "model")
    (dst / "stale.txt").write_text("from an earlier run")
    save_mlflow_model(pruned, dst)
    assert not (dst / "stale.txt").exists() and (dst / "MLmodel").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_what_is_not_a_transformers_checkpoint_is_refused(tmp_path, quantized_checkpoint):  # noqa: F811
    with pytest.raises(CoopPruneError, match="no config.json"):
        save_mlflow_model(tmp_path, tmp_path / "out")
    with pytest.raises(CoopPruneError, match="int8-quantized"):
        save_mlflow_model(quantized_checkpoint[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def register(uri: str, mlflow_model: Path) -> str:  # noqa: F811
    run_id = registry.log_run("coopprune", "tiny semivalue k=2", {}, {ZS: 0.4}, {}, {}, tracking=uri,
                              models={"model": mlflow_model})
    version = registry.register_pruned(run_id, "model", "tiny-pruned", {ZS: 0.4, "perplexity": 9.5}, tracking=uri)
    registry.promote("tiny-pruned", ZS, tracking=uri)
    return version


def test_registered_as_an_mlflow_model_and_loaded_back_as_a_checkpoint(uri, mlflow_model, tmp_path):  # noqa: F811
    version = register(uri, mlflow_model)
    client = mlflow.MlflowClient(uri)
    mv = client.get_model_version("tiny-pruned", version)
    assert mv.tags["removed_layers"] == ",".join(map(str, REMOVED))  # read from model/pruning.json
    outputs = client.get_run(mv.run_id).outputs.model_outputs  # the run's "Logged models"
    logged = client.get_logged_model(outputs[0].model_id)
    assert mv.source == f"models:/{logged.model_id}" and logged.status == LoggedModelStatus.READY
    assert mlflow.models.get_model_info(f"models:/{logged.model_id}").model_id == logged.model_id
    folder = registry.load_registered("models:/tiny-pruned@champion", tmp_path / "champion", tracking=uri)
    assert folder.name == CHECKPOINT_DIR and (folder / "pruning.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers > 0


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (apt-get install chromium)")
def test_the_ui_version_page_shows_aliases_scores_lineage_and_schema(uri, mlflow_model, tmp_path):  # noqa: F811
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from registry_ui import check_version_page, mlflow_ui

    register(uri, mlflow_model)
    with mlflow_ui(uri, tmp_path / "ui.log") as ui:
        rows = check_version_page(ui, "tiny-pruned", "champion", tmp_path / "page.png")
    assert {r["check"] for r in rows} >= {"alias @champion", "alias @candidate", "tag zero_shot_mean",
                                          "tag perplexity", "lineage: source run", "lineage: source (logged) model",
                                          "signature schema"}
    assert all(r["shown"] == "yes" for r in rows), rows
    assert (tmp_path / "page.png").stat().st_size > 10_000
