"""``ingest_flow`` as a real Prefect flow run (session harness from conftest.py)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import duckdb
import pytest

from pipelines.ingest.cli import ingest_flow

_spec = importlib.util.spec_from_file_location(
    "_ingest_inputs", Path(__file__).with_name("_ingest_inputs.py")
)
inp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inp)


@pytest.mark.usefixtures("prefect_harness", "pan_key_env")
def test_ingest_flow_run_returns_the_accounting_and_raises_on_a_rejected_file(tmp_path):
    land = tmp_path / "landing"
    land.mkdir()
    pans = inp.make_pans(3)
    tx = inp.transactions(5, pans)
    tx[4]["entry_mode"] = "5"  # quarantined
    inp.write(tx + [dict(tx[0])], land / "tx.csv")  # plus one identical repeat
    inp.write(inp.terminals(1), land / "reg.csv")
    db = tmp_path / "wh" / "t.duckdb"

    totals = ingest_flow([str(land)], db=str(db))

    # two files plus the shipped default policy; every row accounted for
    assert totals["files_loaded"] == 3 and totals["files_rejected"] == 0
    assert (totals["rows_read"], totals["accepted"], totals["quarantined"]) == (8, 6, 1)
    assert totals["duplicates"] == 1 and totals["gates_failed"] == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM transactions").fetchone()[0] == 4
        assert con.execute("SELECT bool_and(success), count(*) FROM gate_results").fetchone() == (
            True,
            2,
        )
    finally:
        con.close()

    # a rejected file makes the flow run fail (the good file is still loaded)
    (land / "bad.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    inp.write(inp.transactions(2, pans, 100), land / "tx2.csv")
    with pytest.raises(RuntimeError, match="1 file\\(s\\) rejected"):
        ingest_flow([str(land)], db=str(db))

    # both were real flow runs, recorded by the API with their final states
    assert asyncio.run(_ingest_run_states())[-2:] == ["COMPLETED", "FAILED"]


async def _ingest_run_states() -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest"])),
            sort=FlowRunSort.START_TIME_ASC,
        )
    return [r.state_type.value for r in runs]
