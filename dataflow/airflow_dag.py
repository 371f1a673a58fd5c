"""An Airflow DAG to copy: ingest on Dataflow (the flex template), then train on the snapshot it
committed. Tested: it loads in Airflow 3's DagBag (tests/test_airflow_dag.py).

    launch_ingest ─► wait_for_ingest ─► read_snapshot ─► train

1. `launch_ingest` starts the flex template (README: "Dataflow") and pushes the job id;
2. `wait_for_ingest` polls the job until it is done (and fails the run if the job failed);
3. `read_snapshot` reads `OUT/_snapshots/LATEST` from the bucket, checks it is a snapshot id
   and that the job made a new one (an ingest that found nothing new commits no new
   snapshot: the rest is skipped);
4. `train` starts a managed training job (Vertex AI custom job) on `OUT@<id>`: exactly the
   shards of that snapshot, whatever later ingests or refilters commit meanwhile.

Copy it into your DAGs folder and set the params (or pass them when triggering). Only
`apache-airflow` is needed (its standard provider ships with it); the steps call the `gcloud`
CLI, which Cloud Composer workers have. Values from the data never become shell text: the
snapshot id is checked against its pattern and reaches the commands as an environment
variable, as do the job id and the params.

For a torchrun command on a GPU node of your own instead of Vertex AI, replace `train`'s
command with e.g.
    gcloud compute ssh "$GPU_NODE" --zone "$ZONE" --command \
      "torchrun --nproc_per_node 8 -m genie_pipeline.cli train -c pipeline.yaml $OUT@$SNAPSHOT"
(the node expands nothing but the two variables, set by this task from checked values).
"""
from __future__ import annotations

import re
import subprocess
from datetime import datetime, timedelta

from airflow.exceptions import AirflowFailException
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator, ShortCircuitOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, Param

SNAPSHOT_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{6}")
DONE, FAILED = "JOB_STATE_DONE", {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_DRAINED"}

PARAMS = {
    "project": Param("my-project", type="string"),
    "region": Param("us-central1", type="string"),
    "template": Param("gs://my-bucket/templates/genie-ingest.json", type="string",
                      description="the flex template spec (`gcloud dataflow flex-template build`)"),
    "config": Param("gs://my-bucket/genie/pipeline.yaml", type="string"),
    "output": Param("gs://my-bucket/genie/ingest", type="string", description="the ingest output (output.dir)"),
    "temp": Param("gs://my-bucket/tmp", type="string"),
    "max_workers": Param(39, type="integer"),
    "train_image": Param("us-central1-docker.pkg.dev/my-project/genie/genie-pipeline:latest", type="string",
                         description="the image with genie-pipeline and torch (CUDA)"),
    "train_machine": Param("a3-highgpu-8g", type="string"),
    "train_accelerator": Param("NVIDIA_H100_80GB", type="string"),
    "train_gpus": Param(8, type="integer"),
    "train_out": Param("gs://my-bucket/genie/runs", type="string", description="runs go to TRAIN_OUT/<snapshot>"),
}


# the commands: values reach them only as environment variables, set by each task
LAUNCH = (
    'gcloud dataflow flex-template run "genie-ingest-$RUN_TAG" --project "$PROJECT" --region "$REGION" '
    '--template-file-gcs-location "$TEMPLATE" --temp-location "$TEMP" --max-workers "$MAX_WORKERS" '
    '--parameters "config=$CONFIG,output=$OUTPUT" --format "value(job.id)"')
TRAIN = (
    'gcloud ai custom-jobs create --project "$PROJECT" --region "$REGION" '
    '--display-name "genie-train-$SNAPSHOT" '
    '--worker-pool-spec "machine-type=$MACHINE,accelerator-type=$ACCELERATOR,accelerator-count=$TRAIN_GPUS,'
    'replica-count=1,container-image-uri=$TRAIN_IMAGE" '
    '--args "torchrun,--nproc_per_node=$TRAIN_GPUS,-m,genie_pipeline.cli,train,-c,$CONFIG,'
    '--out,$TRAIN_OUT/$SNAPSHOT,$OUTPUT@$SNAPSHOT"')


def _env(*names: str) -> dict[str, str]:
    """Environment variables (NAME: the param `name`, templated) for a Bash task."""
    return {n.upper(): "{{ params.%s }}" % n for n in names}


def _gcloud(*args: str) -> str:
    """A gcloud command's stdout (argv, no shell)."""
    return subprocess.run(["gcloud", *args], check=True, capture_output=True, text=True).stdout.strip()


def latest_snapshot(output: str) -> str | None:
    """The id in OUTPUT/_snapshots/LATEST (None: no snapshot yet), checked against its pattern."""
    try:
        text = _gcloud("storage", "cat", f"{output.rstrip('/')}/_snapshots/LATEST")
    except subprocess.CalledProcessError:
        return None
    if not SNAPSHOT_ID.fullmatch(text):
        raise AirflowFailException(f"{output}/_snapshots/LATEST holds {text[:80]!r}, not a snapshot id")
    return text


def job_done(job_id: str, project: str, region: str) -> bool:
    """True once the Dataflow job is done; fails the task when it failed or was cancelled."""
    state = _gcloud("dataflow", "jobs", "describe", job_id, f"--project={project}", f"--region={region}",
                    "--format=value(currentState)")
    if state in FAILED:
        raise AirflowFailException(f"Dataflow job {job_id} ended {state}: see its logs; nothing was committed")
    return state == DONE


def new_snapshot(output: str, ti) -> bool:
    """Push the snapshot the job committed; False (skip training) where it made none."""
    before = ti.xcom_pull(task_ids="snapshot_before")
    snap = latest_snapshot(output)
    if snap is None or snap == before:
        print(f"{output}: no new snapshot (LATEST {snap}): nothing new to train on")
        return False
    ti.xcom_push(key="snapshot", value=snap)
    return True


with DAG(
    dag_id="genie_ingest_then_train",
    description="Dataflow ingest (flex template), then training pinned to the snapshot it committed",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one ingest holds the output at a time (its lease refuses a second)
    params=PARAMS,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    tags=["genie-pipeline"],
) as dag:
    snapshot_before = PythonOperator(
        task_id="snapshot_before", python_callable=latest_snapshot, op_kwargs={"output": "{{ params.output }}"})

    launch_ingest = BashOperator(
        task_id="launch_ingest",
        bash_command=LAUNCH,  # its last line of stdout (the job id) becomes the task's XCom
        env={"RUN_TAG": "{{ ts_nodash | lower }}",
             **_env("project", "region", "template", "temp", "max_workers", "config", "output")},
        append_env=True,
    )

    wait_for_ingest = PythonSensor(
        task_id="wait_for_ingest",
        python_callable=job_done,
        op_kwargs={"job_id": "{{ ti.xcom_pull(task_ids='launch_ingest') }}", "project": "{{ params.project }}",
                   "region": "{{ params.region }}"},
        mode="reschedule",  # frees the worker slot between polls: an ingest runs for hours
        poke_interval=300,
        timeout=48 * 3600,  # output.job_lease_h: the job's lease on the output lapses then
    )

    read_snapshot = ShortCircuitOperator(
        task_id="read_snapshot", python_callable=new_snapshot, op_kwargs={"output": "{{ params.output }}"})

    train = BashOperator(
        task_id="train",
        bash_command=TRAIN,
        env={"SNAPSHOT": "{{ ti.xcom_pull(task_ids='read_snapshot', key='snapshot') }}",
             **_env("project", "region", "config", "output", "train_out", "train_image", "train_gpus"),
             "MACHINE": "{{ params.train_machine }}", "ACCELERATOR": "{{ params.train_accelerator }}"},
        append_env=True,
    )

    snapshot_before >> launch_ingest >> wait_for_ingest >> read_snapshot >> train
