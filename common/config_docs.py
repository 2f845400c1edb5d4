"""docs/config.md and pyproject's ``[tool.flwr.app.config]``, generated from :class:`Settings`.

Every key is described once, in ``common/config.py``; this module renders that description.
``python -m common.config_docs`` rewrites both files; tests/common/test_config_docs.py fails
when either drifts from the code.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from common.config import GROUPS, Settings, config_key

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "config.md"
PYPROJECT = ROOT / "pyproject.toml"
TABLE = "[tool.flwr.app.config]"

_GROUP_TITLES = {
    "meta": "What is learned: the algorithm and its inner and outer loops",
    "data": "Data: which clients exist and what each holds",
    "model": "Model",
    "federation": "Federation: rounds, sampling, nodes",
    "evaluation": "Evaluation: personalisation and never-seen clients",
    "robust": "Robust aggregation and simulated attackers (docs/robustness.md)",
    "privacy": "Privacy: DP and SecAgg+ (docs/privacy.md)",
    "optimizer": "Server optimizer",
    "run": "The run: seed, device, folder",
}

_INTRO = """\
# Configuration reference

Generated from `common/config.py` by `python -m common.config_docs`, which also writes
`pyproject.toml`'s `[tool.flwr.app.config]`; a test fails when either drifts from the code.

Every key is a flat kebab-case entry of `[tool.flwr.app.config]` (Flower's run config), of
an experiment YAML's `base:` or an algorithm row, or of `--set key=value`. It is parsed once,
at start, into a frozen `Settings`. An unknown key, a wrong type, an out-of-range value or an
impossible combination (e.g. `perfedavg-hf` with `inner-steps = 2`, `dirichlet` on sinusoid,
`femnist` without `data-path`) stops the run before round 1 with a message naming the key,
the value and what is allowed; an experiment YAML is checked the same way before anything
runs. A missing or unreadable data path stops the run before round 1, naming the path.

In the code, a choice among named values (`algorithm`, `metasgd-order`, `aggregation`,
`weighting`, `attack`) is stored as its enum, which reads and is written as the string above.
The handlers hold the `Settings`; the code below them takes the small frozen config it reads,
built by `X.from_settings(settings)`: `TrainConfig` (with `MetaStepConfig` and
`BatchConfig`, client/train.py, common/tasks.py), `AttackConfig` (client/attacks.py),
`ModelConfig` (common/models.py), `UserDataConfig`, `ShakespeareConfig`, `OmniglotConfig` and
`EpisodeSpec` (common/data/), `RobustConfig` (server/robust.py), `DPConfig`
(server/privacy.py) and `SecAggConfig` (server/secagg.py).
"""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _fields_of(group: str) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Settings) if f.metadata["group"] == group]


def _key(f: dataclasses.Field) -> str:
    return config_key(f)


def config_markdown() -> str:
    out = [_INTRO]
    for group in GROUPS:
        out += [f"\n## {_GROUP_TITLES[group]}\n", "| key | default | allowed | meaning |"]
        out.append("|---|---|---|---|")
        for f in _fields_of(group):
            allowed = f.metadata["check"][1].replace("|", "\\|")
            doc = f.metadata["doc"].replace("|", "\\|")
            out.append(f"| `{_key(f)}` | `{toml_value(f.default)}` | {allowed} | {doc} |")
    return "\n".join(out) + "\n"


def pyproject_table() -> str:
    """The body of ``[tool.flwr.app.config]``: the defaults, by group (docs/config.md says
    what each key means)."""
    out = ["# Generated from common/config.py (python -m common.config_docs); meanings:"]
    out.append("# docs/config.md")
    for group in GROUPS:
        out.append(f"# -- {group}")
        out += [f"{_key(f)} = {toml_value(f.default)}" for f in _fields_of(group)]
    return "\n".join(out) + "\n"


def with_table(pyproject: str, table: str) -> str:
    """``pyproject`` with the config table's body replaced (up to the next table)."""
    pattern = re.compile(re.escape(TABLE) + r"\n(.*?)(?=\n\[)", re.S)
    if not pattern.search(pyproject):
        raise ValueError(f"pyproject.toml has no {TABLE} table followed by another table")
    return pattern.sub(lambda _: f"{TABLE}\n{table}", pyproject, count=1)


def main() -> int:
    DOC.write_text(config_markdown())
    PYPROJECT.write_text(with_table(PYPROJECT.read_text(), pyproject_table()))
    print(f"wrote {DOC.relative_to(ROOT)} and {TABLE} of {PYPROJECT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
