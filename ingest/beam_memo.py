"""Two pure computations Beam 2.78 repeats while it builds, translates and runs a job, done
once here. They were most of an ingest's fixed CPU per run (benchmarks/results/ingest.json,
`fixed_cost_one_video`), which a run pays whatever its size:

- `userstate.get_dofn_specs(dofn)`: a DoFn's state and timer specs, found by taking
  `inspect.signature` of every method the DoFn has, about 8 times per ParDo (the ingest's 98
  ParDos: 24,000 signatures a run). The specs are defaults of the class's methods, so they
  are derived once per class; a DoFn holding a bound method of its own (a Map over one) is
  derived each time, as Beam does.
- `PipelineOptions.view_as(cls)`: builds an argparse parser of every option `cls` has and
  parses the flags, ~740 times a run (once per transform applied, and per type check). A
  view holds no values of its own: all views of one options object read and write the
  object's `_all_options`, so the view is made once per (options, cls) and reused while the
  options keep those flags and that dict.

Both are installed by `install()` on import of the ingest's pipeline module, so in every
process that builds the job or unpickles its DoFns (a Dataflow worker too). Each keeps
Beam's own function as `__wrapped__`; tests/test_beam_memo.py holds them to it.
"""
from __future__ import annotations

import types
import weakref

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import userstate


def _specs_by_class(derive):
    known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get_dofn_specs(dofn):
        if any(isinstance(v, types.MethodType) for v in getattr(dofn, "__dict__", {}).values()):
            return derive(dofn)
        specs = known.get(type(dofn))
        if specs is None:
            specs = known[type(dofn)] = derive(dofn)
        return set(specs[0]), set(specs[1])  # callers own the sets they get, as from Beam

    return get_dofn_specs


def _views_once(make):
    made: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def view_as(self, cls):
        mine = made.get(self)
        if mine is None:
            mine = made[self] = {}
        view = mine.get(cls)
        # a view made before this object's flags or value dict were replaced is made anew
        if view is None or view._all_options is not self._all_options or view._flags is not self._flags:
            view = mine[cls] = make(self, cls)
        return view

    return view_as


def install() -> None:
    """Idempotent: patches Beam's two functions in this process."""
    for owner, name, memo in ((userstate, "get_dofn_specs", _specs_by_class),
                              (PipelineOptions, "view_as", _views_once)):
        beams = getattr(owner, name)
        if getattr(beams, "memoized", False):
            continue
        mine = memo(beams)
        mine.memoized, mine.__wrapped__ = True, beams
        mine.__doc__, mine.__name__ = beams.__doc__, beams.__name__
        setattr(owner, name, mine)
