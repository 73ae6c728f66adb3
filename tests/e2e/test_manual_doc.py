"""The two-instance scenario of MANUAL_TESTING.md, run verbatim.

Every fenced bash block after a `<!-- scenario -->` marker runs in order, in one bash, from the
repo root. If the page stops being true, this test fails.
"""

from __future__ import annotations

import re

import pytest

from sandbox import ROOT
from sandbox.docs import MANUAL
from tests.e2e.conftest import Sandbox, claim_slots

pytestmark = pytest.mark.docker

MARKED_BLOCK = re.compile(r"<!-- scenario -->\s*```bash\n(.*?)```", re.DOTALL)
DOC_SLOTS = (1, 2)


def scenario_blocks() -> list[str]:
    return MARKED_BLOCK.findall((ROOT / MANUAL).read_text())


def test_the_page_has_a_scenario() -> None:
    blocks = scenario_blocks()
    assert len(blocks) >= 6
    assert any("up -d" in block for block in blocks)
    assert "down -v" in blocks[-1]


def test_manual_scenario_runs_verbatim(sandbox: Sandbox) -> None:
    claim_slots(DOC_SLOTS, sandbox.env)
    script = "\n".join(scenario_blocks())
    try:
        result = sandbox.bash(script, timeout=900)
        assert result.ok, (
            f"the manual scenario failed (exit {result.returncode})\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
        assert '"slot": 1' in result.stdout and '"slot": 2' in result.stdout
    finally:
        cleanup = "\n".join(
            f"docker compose --env-file .env --env-file env/slot-{s}.env "
            f"-f docker-compose.sandbox.yml down -v"
            for s in DOC_SLOTS
        )
        sandbox.bash(cleanup, timeout=300)
