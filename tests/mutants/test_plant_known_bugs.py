"""The planting script still plants every known bug: each patch's line is in the source
exactly once (a refactor that moves it fails here, in seconds, not at the next audit)."""

from __future__ import annotations

import pytest

from tests.mutants.plant_known_bugs import BUGS, ROOT, PatchNotFound, plant


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name)
def test_each_known_bug_patch_applies_to_the_current_source(bug):
    source = (ROOT / bug.path).read_text()
    planted = plant(source, bug)
    assert planted != source and bug.buggy in planted.split("\n")
    assert all((ROOT / t).is_file() for t in bug.tests)


def test_a_patch_whose_line_moved_fails_loudly():
    bug = BUGS[0]
    with pytest.raises(PatchNotFound, match="appears 0 times"):
        plant("nothing here\n", bug)
