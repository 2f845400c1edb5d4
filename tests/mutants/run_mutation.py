"""Mutation testing of the modules whose numbers the project publishes (mutmut 3).

mutmut changes one small thing in the source at a time (a ``-`` for a ``+``, ``argmax``
for ``argmin``, a constant off by one, a dropped argument) and runs the tests that execute
the changed function; a mutant that no test notices ("survived") marks a place where a
wrong number would go unseen. This script runs it outside CI, one group of modules at a
time, each against only the fast test files that check that group, so a mutant costs
seconds, not the suite's minutes.

Every group runs in its own copy of the checkout (tracked and untracked, not ignored,
files) under ``--workdir``, where mutmut keeps its ``mutants/`` folder and its results
cache: the working tree is never touched, and a rerun with the same workdir only re-tests
what changed. Needs the ``mutation`` extra (``pip install -e ".[mutation]"``).

    python tests/mutants/run_mutation.py meta aggregate     # groups below; all if none
    python tests/mutants/run_mutation.py --list
    python tests/mutants/run_mutation.py --recheck aggregate  # survivors vs today's tests
    cd <workdir>/meta && python -m mutmut show <mutant>      # the diff of one survivor

It prints, per group, mutants killed / survived / not covered / timed out / not reached
(a stopped run) and the score (killed + timed out) / (mutants checked that a test runs),
writes the same to ``<workdir>/summary.json``, and lists every survivor. docs/testing.md
records the last run and why each survivor is harmless, or that it is a gap.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "client", "server")  # mutmut's source_paths: copied as mutants/
ALSO_COPY = ("simulations", "deploy")  # imported by tests, never mutated
KNOWN_BUGS = "tests/test_known_bugs.py"


@dataclass(frozen=True)
class Group:
    modules: tuple[str, ...]
    tests: tuple[str, ...]  # fast test files that check these modules


GROUPS = {
    "meta": Group(
        ("common/meta.py",),
        (
            "tests/common/test_independent_refs.py",
            "tests/common/test_meta.py",
            KNOWN_BUGS,
            "tests/client/test_train.py",
        ),
    ),  # fmt: skip
    "aggregate": Group(
        # server SGD/Adam; evaluation rows, their summaries and client statistics
        ("server/optimizer.py", "server/evaluation.py"),
        (
            "tests/server/test_aggregate.py",
            "tests/server/test_server_optimizer.py",
            "tests/server/test_client_stats.py",
            "tests/server/test_strategy.py",
            "tests/server/test_defaults_hold.py",
            "tests/server/test_evaluation_rounds.py",
            "tests/server/test_evaluation_summary.py",
        ),
    ),
    "personalize": Group(
        ("common/scoring.py",),
        (
            "tests/common/test_scoring.py",
            "tests/common/test_scoring_numbers.py",
            "tests/common/test_tensors_of.py",
            "tests/common/test_scoring_guards.py",
            KNOWN_BUGS,
        ),
    ),
    "client-train": Group(
        ("client/train.py",),
        ("tests/client/test_train.py", KNOWN_BUGS),
    ),
    "client-app": Group(
        ("client/app.py",),
        (
            KNOWN_BUGS,
            "tests/server/test_round_by_hand.py",
            "tests/client/test_app_rows.py",  # cohorts, DP clip, attacks, local, SecAgg+
            "tests/client/test_model_store.py",  # model-dir
            "tests/client/test_onnx_export.py",  # model-onnx
        ),
    ),
    "robust": Group(
        ("server/robust.py",),  # the robust rules and, since issue 19, the weighted mean
        (
            "tests/server/test_robust.py",
            "tests/server/test_robust_edges.py",
            "tests/server/test_aggregate.py",
            "tests/server/test_server_optimizer.py",
        ),
    ),
    "privacy": Group(
        ("server/privacy.py", "common/dp_mechanism.py"),
        (
            "tests/server/test_privacy.py",
            "tests/common/test_dp_clipping.py",
            "tests/common/test_distributed_dp.py",
        ),
    ),
}


def mutmut_config(group: Group) -> str:
    """The ``[tool.mutmut]`` table for one group (appended to the copy's pyproject)."""

    def toml_list(items: tuple[str, ...] | list[str]) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return "\n".join(
        [
            "",
            "[tool.mutmut]",
            f"source_paths = {toml_list(PACKAGES)}",
            f"only_mutate = {toml_list(group.modules)}",
            f"also_copy = {toml_list(ALSO_COPY)}",
            # slow end-to-end runs never count: each mutant gets the fast tests only
            'pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-q"]',
            f"pytest_add_cli_args_test_selection = {toml_list(group.tests)}",
            # torch is not fork-safe once it has run: fork each worker from a clean server
            'process_isolation = "forkserver"',
            # a mutant that loops (an inner-step count off, a loop bound flipped) is stopped at
            # 5x its tests' CPU time, not mutmut's default 15x: it counts as caught either way
            "timeout_multiplier = 5.0",
            "",
        ]
    )


def project_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [p for p in out.stdout.split("\0") if p and (root / p).is_file()]


def prepare(root: Path, dest: Path, group: Group) -> None:
    """Copy the checkout into ``dest`` (refreshing files, keeping mutmut's cache)."""
    for rel in project_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(
        text.split("\n[tool.mutmut]")[0].rstrip("\n") + "\n" + mutmut_config(group)
    )


def mutmut(args: list[str], cwd: Path, log: Path | None = None) -> str:
    # A PYTHONPATH naming the checkout would make the tests import the unmutated code:
    # only MUTATION_PYTHONPATH (where mutmut lives, if not in the environment) is kept.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.environ.get("MUTATION_PYTHONPATH", "")
    cmd = [sys.executable, "-m", "mutmut", *args]
    if log is None:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True).stdout
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"error: mutmut {' '.join(args)} failed in {cwd}:\n{tail}")
    return ""


def run_group(name: str, group: Group, workdir: Path, max_children: int, run: bool) -> dict:
    """Mutate one group (or, ``run=False``, only read the results a run left, also an
    interrupted one: its unchecked mutants are counted as such)."""
    dest = workdir / name
    if run:
        prepare(ROOT, dest, group)
        mutmut(["run", "--max-children", str(max_children)], dest, log=workdir / f"{name}.log")
    mutmut(["export-cicd-stats"], dest)
    stats = json.loads((dest / "mutants" / "mutmut-cicd-stats.json").read_text())
    listing = mutmut(["results"], dest)
    survivors = re.findall(r"^\s+(\S+): survived$", listing, flags=re.MULTILINE)
    uncovered = re.findall(r"^\s+(\S+): no tests$", listing, flags=re.MULTILINE)
    # A timeout is mutmut's CPU-time limit (5x the tests' own time): a mutant that loops
    # or crawls. It counts as caught, and is reported on its own.
    caught = stats["killed"] + stats["timeout"]
    # mutmut's export has no "not checked" count: what a stopped run did not reach.
    verdicts = ("killed", "timeout", "survived", "no_tests", "suspicious", "segfault", "skipped")
    checked = sum(stats.get(k, 0) for k in verdicts)
    return {
        "modules": list(group.modules),
        "tests": list(group.tests),
        "mutants": stats["total"],
        "killed": stats["killed"],
        "timeout": stats["timeout"],
        "survived": stats["survived"],
        "no_tests": stats["no_tests"],
        "not_checked": stats["total"] - checked,
        "score": round(caught / (checked - stats["no_tests"]), 4) if checked else None,
        "survivors": survivors,
        "not_covered": uncovered,
    }


def recheck(name: str, group: Group, workdir: Path, survivors: list[str]) -> list[str]:
    """Survivors of the last run that the current tests still miss.

    Each survivor is applied (``mutmut apply``) to the source in the group's workdir, after
    the tests there are refreshed from the checkout, and the group's test files run once;
    the source is restored after each. Cheaper than a new run after adding tests for
    survivors (a changed test selection makes mutmut redo every mutant)."""
    dest = workdir / name
    prepare(ROOT, dest, group)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(dest))
    missed = []
    for mutant in survivors:
        mutmut(["apply", mutant], dest)
        try:
            out = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p",
                 "no:cacheprovider", *group.tests],
                cwd=dest, env=env, capture_output=True, text=True,
            )  # fmt: skip
        finally:
            for module in group.modules:
                shutil.copy2(ROOT / module, dest / module)
        verdict = "killed now" if out.returncode == 1 else "still survives"
        print(f"    {verdict:15s} {mutant}")
        if out.returncode != 1:
            missed.append(mutant)
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", help=f"any of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="print the groups and exit")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fedmeta-mutation"
    )
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutants")
    parser.add_argument(
        "--report", action="store_true", help="only summarise the runs already in --workdir"
    )
    parser.add_argument(
        "--recheck", action="store_true",
        help="test the last run's survivors again against the current tests",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.list:
        for name, g in GROUPS.items():
            print(f"{name:13s} {', '.join(g.modules)}  <-  {', '.join(g.tests)}")
        return 0
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    summary_path = args.workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if args.recheck:
        for name in args.groups or list(GROUPS):
            if name not in summary:
                continue
            print(f"{name}: rechecking {len(summary[name]['survivors'])} survivors")
            left = recheck(name, GROUPS[name], args.workdir, summary[name]["survivors"])
            summary[name]["survivors_after_recheck"] = left
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    for name in args.groups or list(GROUPS):
        if not args.report:
            print(f"{name}: mutating {', '.join(GROUPS[name].modules)} ...", flush=True)
        summary[name] = result = run_group(
            name, GROUPS[name], args.workdir, args.max_children, run=not args.report
        )
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(
            f"{name}: {result['mutants']} mutants, {result['killed']} killed, "
            f"{result['timeout']} timed out, {result['survived']} survived, "
            f"{result['no_tests']} not covered, {result['not_checked']} not checked: "
            f"score {result['score'] or 0:.1%} of those checked"
        )
        for mutant in result["survivors"]:
            print(f"    survived  {mutant}")
        for mutant in result["not_covered"]:
            print(f"    no tests  {mutant}")
    print(f"summary: {summary_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
