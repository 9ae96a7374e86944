"""The pruning arms and what they share: no config, no files, no Hydra.

- :mod:`.events`: ``PruneEvent`` and the ledger schema, ``rebuild_optimizer``;
- :mod:`.calendar`: which epochs end with an event, and the lr anneal on top of the calendar;
- :mod:`.base`: the ``Pruner`` base (the per-event loop and the cut of one layer);
- :mod:`.schedules`: keep fractions f(epoch) and the spike-count cut;
- one module per arm: :mod:`.rmt` (the MP edge), :mod:`.lowrank`, :mod:`.magnitude`, :mod:`.neuron` (on the
  budget of :mod:`.budget`), :mod:`.control` (``none`` and ``control``);
- :mod:`.batchnorm`: BatchNorm statistics after a cut.
"""
