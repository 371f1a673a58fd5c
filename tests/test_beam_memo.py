"""ingest/beam_memo.py does once what Beam repeats per job: a DoFn class's state and timer
specs, and an options object's views. What Beam's own functions give must not change: the
specs of every DoFn of the job and of DoFns that do use state; option values read and written
through any view."""
import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions, TypeOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.core import CallableWrapperDoFn

from genie_pipeline.config import parse_config
from genie_pipeline.ingest.pipeline import prepare_job

beam_own = userstate.get_dofn_specs.__wrapped__
COUNT = userstate.ReadModifyWriteStateSpec("count", VarIntCoder())
FLUSH = userstate.TimerSpec("flush", userstate.TimeDomain.WATERMARK)


class Counting(beam.DoFn):
    def process(self, kv, count=beam.DoFn.StateParam(COUNT), flush=beam.DoFn.TimerParam(FLUSH)):
        n = (count.read() or 0) + 1
        count.write(n)
        yield kv[0], n

    @userstate.on_timer(FLUSH)
    def on_flush(self):
        return []


class Holder:
    def plain(self, x):
        return x

    def stateful(self, kv, count=beam.DoFn.StateParam(COUNT)):
        yield kv


def job_dofns(tmp_path):
    cat = tmp_path / "c.jsonl"
    cat.write_text("")
    cfg = parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(cat), "keywords": "none"}],
                        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                        "output": {"dir": str(tmp_path / "out")}})
    p = prepare_job(cfg, str(tmp_path / "out"))[0]
    found = []

    class Visit(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.ParDo):
                found.append(node.transform.fn)

    p.visit(Visit())
    return found


def test_every_dofn_of_the_job_gets_beams_own_specs(tmp_path):
    dofns = job_dofns(tmp_path)
    assert len(dofns) > 50 and userstate.get_dofn_specs.memoized
    for fn in dofns:
        assert userstate.get_dofn_specs(fn) == beam_own(fn), fn
        assert not userstate.is_stateful_dofn(fn)


def test_state_and_timers_are_still_found_and_used(tmp_path):
    specs = userstate.get_dofn_specs(Counting())
    assert specs == beam_own(Counting()) == ({COUNT}, {FLUSH})
    specs[0].clear()  # the caller's copy: the next DoFn of the class still has its state
    assert userstate.get_dofn_specs(Counting()) == ({COUNT}, {FLUSH})
    # a Map over a bound method is the method's specs, whichever method it is
    plain, stateful = CallableWrapperDoFn(Holder().plain), CallableWrapperDoFn(Holder().stateful)
    assert userstate.get_dofn_specs(plain) == beam_own(plain) == (set(), set())
    assert userstate.get_dofn_specs(stateful) == beam_own(stateful) == ({COUNT}, set())
    with beam.Pipeline(runner=FnApiRunner()) as p:
        counts = (p | beam.Create([("a", 1), ("b", 1), ("a", 2), ("a", 3)]) | beam.ParDo(Counting())
                  | beam.CombinePerKey(max))
        assert_that(counts, equal_to([("a", 3), ("b", 1)]))


def test_views_read_and_write_the_options_as_beams_do():
    own = PipelineOptions.view_as.__wrapped__
    opts = PipelineOptions(["--runner=FnApiRunner", "--project=p1", "--no_pipeline_type_check"])
    assert opts.view_as(StandardOptions) is opts.view_as(StandardOptions)  # made once
    for cls in (StandardOptions, GoogleCloudOptions, TypeOptions):
        mine, beams = opts.view_as(cls), own(opts, cls)
        assert type(mine) is cls and mine.get_all_options() == beams.get_all_options()
    assert opts.view_as(TypeOptions).pipeline_type_check is False
    # a value set through one view is what every view reads, Beam's and a reused one
    opts.view_as(GoogleCloudOptions).project = "p2"
    assert own(opts, GoogleCloudOptions).project == opts.view_as(GoogleCloudOptions).project == "p2"
    own(opts, StandardOptions).runner = "DataflowRunner"
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    # other flags, other views; a view of a view shares the values
    other = PipelineOptions(["--project=p3"])
    assert other.view_as(GoogleCloudOptions).project == "p3" and opts.view_as(GoogleCloudOptions).project == "p2"
    assert opts.view_as(StandardOptions).view_as(GoogleCloudOptions).project == "p2"
