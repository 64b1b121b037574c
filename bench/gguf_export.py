"""GGUF export on SmolLM2-135M, end to end: both ways, checked against the pruned checkpoint and,
where llama-cpp-python is installed, against llama.cpp itself.

1. Prune the bundled Q4_1 GGUF directly (the layers a pruned checkpoint removed, default: the
   reference run's `runs/default/pruned`), tensors copied in their own quantization; transformers'
   GGUF loader must give the same logits as pruning the dequantized model (the checkpoint
   coopprune prunes).
2. Export the pruned checkpoint to GGUF f32 and f16 (tokenizer copied from the source GGUF); their
   logits against the checkpoint's.
3. llama.cpp (`pip install llama-cpp-python==0.3.36`, a source build): greedy tokens from each file
   against transformers' greedy tokens on the same file, and llama.cpp's own load report.

    python bench/gguf_export.py [--like runs/default/pruned] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from coopprune.fetch import default_gguf, fetch_default_model
from coopprune.gguf_export import export_gguf, prune_gguf, record_facts
from coopprune.gguf_io import read_facts
from coopprune.models import load_model
from coopprune.prune import prune_layers
from coopprune.records import PruningRecord

RESULTS = Path(__file__).parent / "results"
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits[0]


def greedy_hf(model, ids: torch.Tensor, n: int) -> list[int]:
    """Argmax decoding for exactly ``n`` tokens, end-of-text included (as llama.cpp's loop below;
    ``generate`` would stop there, or with ``min_new_tokens`` forbid it)."""
    seq = ids
    with torch.inference_mode():
        for _ in range(n):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[0, ids.shape[1]:].tolist()


def greedy_llama_cpp(path: Path, ids: list[int], n: int) -> tuple[list[int] | None, str]:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None, "llama-cpp-python not installed"
    llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, logits_all=False)
    out: list[int] = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == n:
            break
    return out, f"llama.cpp loaded {llm.metadata.get('general.architecture')} with {llm.metadata.get('llama.block_count')} blocks"


def agreement(a: list[int] | None, b: list[int]) -> str:
    if a is None:
        return "not run"
    prefix = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"{prefix}/{len(b)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--like", type=Path, default=Path("runs/default/pruned"))
    parser.add_argument("--work", type=Path, default=Path("bench/work/gguf"))
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    record = PruningRecord.load(args.like)
    if record.base_model != "default":
        raise SystemExit(f"{args.like} was not pruned from the bundled default; this bench compares against its GGUF")
    removed = record.removed_layers
    args.work.mkdir(parents=True, exist_ok=True)
    source = default_gguf()
    tokenizer = AutoTokenizer.from_pretrained(args.like)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids

    rows = []
    start = time.perf_counter()
    q4 = prune_gguf(source, removed, args.work / "pruned-q4_1.gguf", facts=record_facts(asdict(record)), overwrite=True)
    seconds = time.perf_counter() - start
    dequantized = load_model(str(fetch_default_model(progress=False)))  # the checkpoint coopprune prunes
    prune_layers(dequantized, removed)
    reference = logits(dequantized.model, ids)
    q4_model = AutoModelForCausalLM.from_pretrained(q4.parent, gguf_file=q4.name, dtype=torch.float32)
    rows.append({"file": q4.name, "how": "pruned GGUF (Q4_1 kept)", "MB": q4.stat().st_size / 1e6, "seconds": seconds,
                 "compared with": "the dequantized model, pruned", "max abs logit diff": float((logits(q4_model, ids) - reference).abs().max()),
                 "model": q4_model, "path": q4})

    checkpoint = AutoModelForCausalLM.from_pretrained(args.like, dtype=torch.float32)
    expected = logits(checkpoint, ids)
    for dtype in ("f32", "f16"):
        start = time.perf_counter()
        path = export_gguf(args.like, args.work / f"pruned-{dtype}.gguf", dtype=dtype, vocab_from=source, overwrite=True)
        seconds = time.perf_counter() - start
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        rows.append({"file": path.name, "how": f"exported checkpoint ({dtype})", "MB": path.stat().st_size / 1e6,
                     "seconds": seconds, "compared with": "the pruned checkpoint",
                     "max abs logit diff": float((logits(model, ids) - expected).abs().max()), "model": model, "path": path})

    reports = []
    for row in rows:
        hf = greedy_hf(row.pop("model"), ids, args.tokens)
        cpp, report = greedy_llama_cpp(row.pop("path"), ids[0].tolist(), args.tokens)
        row["greedy tokens = transformers (llama.cpp)"] = agreement(cpp, hf)
        reports.append(f"{row['file']}: {report}" + (f"; llama.cpp text: {tokenizer.decode(cpp)!r}" if cpp else ""))
    facts = read_facts(q4)
    lines = [f"GGUF export of SmolLM2-135M without layers {removed} ({record.method}); prompt {PROMPT!r}, "
             f"{args.tokens} greedy tokens. Facts in the pruned Q4_1 file: {json.dumps(facts)}", "",
             "| " + " | ".join(k for k in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |" for r in rows]
    lines += ["", *[f"- {r}" for r in reports]]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gguf_export.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
