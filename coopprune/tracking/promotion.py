"""Promotion: move alias ``champion`` to the ``candidate`` version only when it beats the champion by
a stated ``Rule`` (``RULES``: mean zero-shot accuracy at no more parameters, perplexity, or mean
perplexity over the evaluation domains); each ``Decision`` is written to the candidate's tags and
logged as a run.

The top of ``coopprune.tracking``: imports ``connection``, ``runs`` and ``versions``, none of which
imports it.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from coopprune.errors import CoopPruneError
from coopprune.tracking.connection import _mlflow, tracking_uri
from coopprune.tracking.runs import _strings, log_run
from coopprune.tracking.versions import (
    CANDIDATE,
    DOMAIN_MEAN_PERPLEXITY,
    PARAMETERS,
    PERPLEXITY,
    ZERO_SHOT_MEAN,
    NotRegistered,
    _registered_aliases,
)

CHAMPION = "champion"


@dataclass(frozen=True)
class Decision:
    """The outcome of one promotion attempt; also written to the candidate's tags and a run."""

    promoted: bool
    reason: str
    candidate: str  # version number
    champion: str | None  # champion version before the decision (None: there was none)
    rule: str


def _number(version: ModelVersion, key: str) -> float | None:
    try:
        value = float(version.tags[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Rule:
    """When a candidate beats the champion: strictly better ``metric`` and, if ``no_larger``, no more parameters."""

    metric: str
    higher_is_better: bool
    no_larger: bool

    def judge(self, candidate: ModelVersion, champion: ModelVersion | None) -> tuple[bool, str]:
        c_v, metric = candidate.version, self.metric
        ours = _number(candidate, metric)
        if ours is None:
            return False, f"candidate v{c_v} has no numeric '{metric}' tag"
        if champion is None:
            return True, f"first candidate: no champion yet ({metric} {ours:.4g})"
        h_v = champion.version
        if str(h_v) == str(c_v):
            return False, f"v{c_v} is already the champion"
        theirs = _number(champion, metric)
        if theirs is None:
            return False, f"champion v{h_v} has no numeric '{metric}' tag to compare with"
        size = ""
        if self.no_larger:
            p_ours, p_theirs = _number(candidate, PARAMETERS), _number(champion, PARAMETERS)
            if p_ours is None or p_theirs is None:
                return False, f"'{PARAMETERS}' tag missing on v{c_v if p_ours is None else h_v}: cannot compare sizes"
            if p_ours > p_theirs:
                sizes = f"{p_ours:,.0f} > {p_theirs:,.0f}"
                return False, f"candidate v{c_v} has more parameters than champion v{h_v} ({sizes})"
            size = f" at {p_ours:,.0f} <= {p_theirs:,.0f} parameters"
        better = ours > theirs if self.higher_is_better else ours < theirs
        word = "higher" if self.higher_is_better else "lower"
        if not better:
            return False, f"{metric} {ours:.4g} is not {word} than champion v{h_v}'s {theirs:.4g}"
        return True, f"{metric} {ours:.4g} is {word} than champion v{h_v}'s {theirs:.4g}{size}"


RULES: dict[str, Rule] = {
    "zero_shot_mean": Rule(ZERO_SHOT_MEAN, higher_is_better=True, no_larger=True),
    "perplexity": Rule(PERPLEXITY, higher_is_better=False, no_larger=False),
    "domain_mean_perplexity": Rule(DOMAIN_MEAN_PERPLEXITY, higher_is_better=False, no_larger=False),
}


def promote(
    model_name: str, rule: str = "zero_shot_mean", *, tracking: str | None = None, experiment: str = "promotions"
) -> Decision:
    """Move alias ``champion`` to the ``candidate`` version only if it beats the current champion.

    Rules: ``zero_shot_mean`` (default) = higher mean zero-shot accuracy at equal or fewer parameters;
    ``perplexity`` = lower held-out perplexity; ``domain_mean_perplexity`` = lower mean held-out
    perplexity over the evaluation domains (``evaluation.domains``). A first candidate (no champion) is promoted; a
    candidate without the rule's tag is not. The decision is written as ``promotion.*`` tags on the
    candidate version and as a run in ``experiment`` (the history, since tags are overwritten).
    """
    if rule not in RULES:
        raise CoopPruneError(f"unknown promotion rule '{rule}'; choose one of {', '.join(RULES)}")
    uri = tracking or tracking_uri(Path.cwd())
    with _mlflow(uri) as client:
        aliases = _registered_aliases(client, model_name, uri)
        if CANDIDATE not in aliases:
            raise NotRegistered(f"registered model '{model_name}' has no '{CANDIDATE}' version at {uri}")
        candidate = client.get_model_version(model_name, aliases[CANDIDATE])
        champion = client.get_model_version(model_name, aliases[CHAMPION]) if CHAMPION in aliases else None
        promoted, reason = RULES[rule].judge(candidate, champion)
        decision = Decision(promoted, reason, str(candidate.version), aliases.get(CHAMPION), rule)
        if promoted:
            client.set_registered_model_alias(model_name, CHAMPION, decision.candidate)
        record = {
            "promotion.rule": rule,
            "promotion.decision": "promoted" if promoted else "kept champion",
            "promotion.reason": reason,
            "promotion.champion_before": decision.champion or "none",
            "promotion.at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        for key, value in _strings(record).items():
            client.set_model_version_tag(model_name, decision.candidate, key, value)
    log_run(
        experiment, f"promote {model_name} v{decision.candidate}", {}, {"promoted": int(promoted)}, {},
        {**record, "model_name": model_name, "candidate": decision.candidate}, tracking=uri,
    )
    return decision
