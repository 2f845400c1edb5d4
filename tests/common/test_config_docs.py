"""Each key is described once, in common/config.py: docs/config.md and pyproject's config
table are generated from it and must not drift (regenerate: python -m common.config_docs)."""

import dataclasses
import tomllib

from common import config_docs
from common.config import GROUPS, Settings, config_key, parse_settings


def test_docs_config_md_is_generated_from_the_code():
    assert config_docs.DOC.read_text() == config_docs.config_markdown(), (
        "docs/config.md drifted from common/config.py: run python -m common.config_docs"
    )


def test_pyproject_table_is_generated_from_the_code():
    text = config_docs.PYPROJECT.read_text()
    assert config_docs.with_table(text, config_docs.pyproject_table()) == text, (
        "pyproject's [tool.flwr.app.config] drifted: run python -m common.config_docs"
    )
    table = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    assert parse_settings(table) == Settings()  # every default, exactly, and parseable


def test_every_key_has_a_group_and_a_description_and_appears_in_the_docs():
    doc = config_docs.config_markdown()
    for f in dataclasses.fields(Settings):
        assert f.metadata["group"] in GROUPS
        assert len(f.metadata["doc"]) > 10, f.name
        assert f"| `{config_key(f)}` |" in doc


def test_a_changed_default_makes_the_check_fail():
    changed = config_docs.pyproject_table().replace("num-rounds = 100", "num-rounds = 7")
    text = config_docs.with_table(config_docs.PYPROJECT.read_text(), changed)
    assert config_docs.with_table(text, config_docs.pyproject_table()) != text
