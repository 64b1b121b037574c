"""The code's shape at one or more git revisions: lines per module, the longest functions, and import cycles.

Reads the Python files of ``coopprune/``, ``tasks/``, ``flows/`` and ``bench/`` as committed at each
revision (``git show``), so a before/after table needs no checkout:

    python bench/shape.py --revs 9b4facf HEAD
"""

from __future__ import annotations

import argparse
import ast
import subprocess

ROOTS = ("coopprune", "tasks", "flows", "bench")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def files_at(rev: str) -> dict[str, str]:
    names = [n for n in _git("ls-tree", "-r", "--name-only", rev, "--", *ROOTS).splitlines() if n.endswith(".py")]
    return {n: _git("show", f"{rev}:{n}") for n in names}


def functions(source: str) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                out.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(ast.parse(source), "")
    return out


def module_name(path: str) -> str:
    return path[:-3].replace("/", ".").removesuffix(".__init__")


def import_cycles(files: dict[str, str]) -> list[tuple[str, str]]:
    """Pairs of library modules that import each other (at any depth of the file, lazy imports too)."""
    modules = {module_name(p) for p in files if p.startswith("coopprune/")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path, source in files.items():
        if not path.startswith("coopprune/"):
            continue
        me = module_name(path)
        for node in ast.walk(ast.parse(source)):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[me] |= {t for t in targets if t in modules and t != me}
    return sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, set())})


def summary(rev: str) -> dict:
    files = files_at(rev)
    lib = {p: s for p, s in files.items() if p.startswith("coopprune/")}
    lengths = sorted(((len(s.splitlines()), p) for p, s in lib.items()), reverse=True)
    funcs = sorted(((n, f"{p}:{name}") for p, s in files.items() for name, n in functions(s)), reverse=True)
    return {
        "rev": _git("rev-parse", "--short", rev).strip(),
        "library modules": len(lib),
        "library lines": sum(n for n, _ in lengths),
        "median module lines": sorted(n for n, _ in lengths)[len(lengths) // 2],
        "largest modules": ", ".join(f"{p.removeprefix('coopprune/')} {n}" for n, p in lengths[:4]),
        "modules over 400 lines": sum(1 for n, _ in lengths if n > 400),
        "longest functions": ", ".join(f"{name.split(':')[1]} {n}" for n, name in funcs[:4]),
        "functions over 60 lines": sum(1 for n, _ in funcs if n > 60),
        "import cycles in coopprune/": "; ".join(f"{a} <-> {b}" for a, b in import_cycles(files)) or "none",
        "tasks/ modules": sum(1 for p in files if p.startswith("tasks/")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revs", nargs="+", default=["HEAD"])
    args = parser.parse_args()
    rows = [summary(rev) for rev in args.revs]
    print("| measure | " + " | ".join(r["rev"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for key in rows[0]:
        if key != "rev":
            print(f"| {key} | " + " | ".join(str(r[key]) for r in rows) + " |")


if __name__ == "__main__":
    main()
