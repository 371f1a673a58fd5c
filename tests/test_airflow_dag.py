"""The orchestration example (dataflow/airflow_dag.py) loads in Airflow's own DagBag, with its
four steps in order, and its snapshot check refuses what is not a snapshot id.

Airflow is not a dependency of the project (it pins its own world of packages): the test runs
the DAG in a Python that has it, $GENIE_AIRFLOW_PYTHON (e.g. a venv made with
`pip install apache-airflow==3.3.2`), else this Python if it imports airflow; otherwise it is
skipped and says so. `gcloud` cannot run here: a stand-in script on PATH answers the one
call the check makes (`gcloud storage cat`), and says so in its name."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

DAG = ROOT / "dataflow" / "airflow_dag.py"

PROBE = textwrap.dedent("""
    import json, sys
    try:
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder=sys.argv[1])
    except ImportError:  # Airflow 2
        from airflow.models.dagbag import DagBag
        bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
    dag = bag.dags.get("genie_ingest_then_train")  # parsed here (get_dag would ask the metadata DB)
    out = {"errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()},
           "tasks": sorted(dag.task_ids) if dag else None,
           "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} if dag else None}
    sys.path.insert(0, sys.argv[2])
    import airflow_dag
    from airflow.exceptions import AirflowFailException
    checks = []
    for answer in ("20261207T061500-1a2b3c", "20261207T061500-1a2b3c; rm -rf /"):
        import os
        os.environ["FAKE_LATEST"] = answer
        try:
            checks.append(airflow_dag.latest_snapshot("gs://b/out"))
        except AirflowFailException as e:
            checks.append("refused: " + str(e)[:60])
    out["checks"] = checks
    print(json.dumps(out))
""")


def _airflow_python() -> str | None:
    exe = os.environ.get("GENIE_AIRFLOW_PYTHON")
    if exe:
        return exe
    try:
        import airflow  # noqa: F401
        return sys.executable
    except ImportError:
        return None


@pytest.mark.slow
def test_the_dag_loads_in_airflows_dagbag_with_its_steps_in_order(tmp_path):
    exe = _airflow_python()
    if exe is None:
        pytest.skip("no Airflow here: set GENIE_AIRFLOW_PYTHON to a Python with apache-airflow installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"  # a stand-in: gcloud and a real bucket cannot be reached from here
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "storage cat" ] && printf "%s\\n" "$FAKE_LATEST" && exit 0\nexit 1\n')
    fake.chmod(0o755)
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(DAG, dags / "airflow_dag.py")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "True"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([exe, "-c", PROBE, str(dags), str(dags)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["errors"] == {}
    order = ["snapshot_before", "launch_ingest", "wait_for_ingest", "read_snapshot", "train"]
    assert got["tasks"] == sorted(order)
    assert got["upstream"] == {t: ([order[i - 1]] if i else []) for i, t in enumerate(order)}
    assert got["checks"][0] == "20261207T061500-1a2b3c" and got["checks"][1].startswith("refused: ")
