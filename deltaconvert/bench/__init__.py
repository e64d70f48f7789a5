"""The benchmark and the demo, apart from the library they measure.

* :mod:`~deltaconvert.bench.matrix`: ``deltaconvert bench``, delta models against dense
  baselines over a matrix of models × clips × resolutions;
* :mod:`~deltaconvert.bench.data`: where clips, weights and tuned threshold files are
  found, and frames as model inputs;
* :mod:`~deltaconvert.bench.static_clip`: the generator of the static-camera clip;
* :mod:`~deltaconvert.bench.stage`: copies every input the benchmark reads into one folder;
* :mod:`~deltaconvert.bench.models`: the models it runs;
* :mod:`~deltaconvert.bench.runners`: how each runner is run and measured;
* :mod:`~deltaconvert.bench.timing`: the dense baselines' CUDA-graph replay (per-call
  timing is the library's :mod:`deltaconvert.timing`);
* :mod:`~deltaconvert.bench.streams`: N independent streams of one clip in one batch;
* :mod:`~deltaconvert.bench.unchanged`: the unchanged frame, measured around the model call;
* :mod:`~deltaconvert.bench.fit`: the fitted cost ``ms ≈ a + b·work`` of a delta model;
* :mod:`~deltaconvert.bench.criterion`: the accuracy criterion and the run it selects;
* :mod:`~deltaconvert.bench.verdict`: the verdict on the issue-11 targets;
* :mod:`~deltaconvert.bench.report`: markdown tables and plots of the results;
* :mod:`~deltaconvert.bench.demo`: ``deltaconvert demo``.

This package imports the library, never the other way round: only ``deltaconvert.cli``
and the scripts import it.
"""
