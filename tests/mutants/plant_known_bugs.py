"""Plant each known bug, one at a time, in a copy of the tree and show which fast tests fail.

Issue 21 listed six plausible bugs that once passed every test (the first six below), and
inner-step sign flips that only a closed-form test caught (the last two). This script copies the
checkout (tracked and untracked, not ignored, files) into a temporary folder, swaps exactly
one source line for its buggy version, runs the fast tests that guard it in that copy, and
prints the tests that failed. The working tree is never touched.

Each patch names the exact line it replaces; if that line is not found exactly once the
script stops with an error, so a refactor that moves the code is noticed instead of
silently planting nothing. First it runs the same tests on the unpatched copy: they must
pass, or a "caught" bug would prove nothing.

    python tests/mutants/plant_known_bugs.py            # all eight, ~4 min on 2 busy cores
    python tests/mutants/plant_known_bugs.py --only argmin-accuracy

Exit status 0 when every bug makes at least one test fail, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KNOWN_BUGS_TESTS = "tests/test_known_bugs.py"


@dataclass(frozen=True)
class Bug:
    name: str
    path: str  # relative to the project root
    line: str  # the exact correct line (with its indentation)
    buggy: str  # what replaces it
    tests: tuple[str, ...]  # fast test files that must catch it


BUGS = (
    Bug(
        "argmin-accuracy",
        "common/scoring.py",
        "        correct = (out.argmax(dim=1) == y).to(per_row.dtype)",
        "        correct = (out.argmin(dim=1) == y).to(per_row.dtype)",
        (KNOWN_BUGS_TESTS, "tests/common/test_scoring.py"),
    ),
    Bug(
        "weights-by-test-size",
        "client/app.py",
        "            values[rt.partition_id][NUM_EXAMPLES] = rt.data.num_train",
        "            values[rt.partition_id][NUM_EXAMPLES] = rt.data.num_test",
        (KNOWN_BUGS_TESTS, "tests/server/test_round_by_hand.py"),
    ),
    Bug(
        "metasgd-eval-ignores-alpha",
        "client/app.py",
        "    lr = bounded_step_sizes(got.alpha, s.alpha_bounds) if got.alpha is not None "
        "else s.inner_lr",
        "    lr = s.inner_lr",
        (KNOWN_BUGS_TESTS,),
    ),
    Bug(
        "train-draws-evaluation-stream",
        "client/app.py",
        "    rngs = [rt.rng(got.server_round, TRAIN_PURPOSE) for rt in ready]",
        "    rngs = [rt.rng(got.server_round, EVALUATE_PURPOSE) for rt in ready]",
        (KNOWN_BUGS_TESTS,),
    ),
    Bug(
        "finite-difference-runs-exact",
        "common/meta.py",
        '    if hessian_mode == "exact":',
        "    if True:",
        (KNOWN_BUGS_TESTS, "tests/common/test_meta.py"),
    ),
    Bug(
        "support-loss-of-last-step",
        "common/meta.py",
        "        first_loss = loss if first_loss is None else first_loss",
        "        first_loss = loss",
        (KNOWN_BUGS_TESTS, "tests/common/test_meta.py", "tests/client/test_train.py"),
    ),
    # Issue 21 also found that the finite-difference tests differentiate the project's own
    # adapt(), so flipping the inner step's sign passed them; the hand-written references
    # of tests/common/test_independent_refs.py must catch it on their own.
    Bug(
        "inner-step-sign",
        "common/meta.py",
        "        adapted = sgd_step(adapted, grads if create_graph else _detached(grads), lr)",
        "        adapted = sgd_step(adapted, {n: -g for n, g in "
        "(grads if create_graph else _detached(grads)).items()}, lr)",
        ("tests/common/test_independent_refs.py",),
    ),
    Bug(
        "hessian-free-inner-step-sign",
        "common/meta.py",
        "    adapted = sgd_step(theta, g_support, lr)",
        "    adapted = sgd_step(theta, {n: -g for n, g in g_support.items()}, lr)",
        ("tests/common/test_independent_refs.py",),
    ),
)


class PatchNotFound(RuntimeError):
    """The line a patch replaces is not in the source exactly once: the code moved."""


def plant(source: str, bug: Bug) -> str:
    lines = source.split("\n")
    hits = [i for i, text in enumerate(lines) if text == bug.line]
    if len(hits) != 1:
        raise PatchNotFound(
            f"error: bug {bug.name!r}: the line\n    {bug.line.strip()}\nappears {len(hits)} "
            f"times in {bug.path} (expected exactly once). The code moved: update the "
            f"patch in {Path(__file__).name} so it plants the same bug again."
        )
    lines[hits[0]] = bug.buggy
    return "\n".join(lines)


def project_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [p for p in out.stdout.split("\0") if p and (root / p).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    for rel in project_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, list[str]]:
    """pytest in ``copy`` on ``tests`` (slow ones left out); (exit code, failed test ids)."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
           "-rf", "--no-header", *tests]  # fmt: skip
    out = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
    failed = re.findall(r"^FAILED (\S+)", out.stdout, flags=re.MULTILINE)
    if out.returncode not in (0, 1):  # 2+: pytest could not run (import error, bad path)
        sys.stdout.write(out.stdout[-3000:] + out.stderr[-2000:])
    return out.returncode, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=[b.name for b in BUGS])
    parser.add_argument("--no-baseline", action="store_true", help="skip the unpatched run")
    args = parser.parse_args(argv)
    bugs = [b for b in BUGS if not args.only or b.name in args.only]
    for bug in bugs:  # check every patch applies before spending minutes on tests
        plant((ROOT / bug.path).read_text(), bug)
    survivors = []
    with tempfile.TemporaryDirectory(prefix="plant-known-bugs-") as tmp:
        copy = Path(tmp)
        copy_tree(ROOT, copy)
        if not args.no_baseline:
            every = tuple(sorted({t for b in bugs for t in b.tests}))
            code, failed = run_tests(copy, every)
            if code != 0:
                print(f"error: the unpatched tree fails {len(failed)} test(s) {failed}: "
                      "fix those first, or a caught bug proves nothing")  # fmt: skip
                return 1
            print(f"unpatched: {', '.join(every)} pass")
        for bug in bugs:
            original = (copy / bug.path).read_text()
            (copy / bug.path).write_text(plant(original, bug))
            try:
                code, failed = run_tests(copy, bug.tests)
            finally:
                (copy / bug.path).write_text(original)
            if code == 1 and failed:
                print(f"CAUGHT   {bug.name}: {len(failed)} failing test(s)")
                for test in failed:
                    print(f"           {test}")
            else:
                survivors.append(bug.name)
                print(f"SURVIVED {bug.name}: pytest exit code {code}, no failing test")
    print(f"{len(bugs) - len(survivors)} of {len(bugs)} planted bugs caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
