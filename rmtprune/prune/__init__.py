"""The pruning arms and what they share: no config, no files, no Hydra.

- :mod:`.events`: ``PruneEvent`` and the ledger schema, ``rebuild_optimizer``;
- :mod:`.calendar`: which epochs end with an event, and the lr anneal on top of the calendar;
- :mod:`.base`: the ``Pruner`` base (calendar, lr factor, momentum policy), ``LayerPruner`` (which layers, by
  the one rule of ``nn.select``) and the cut of one layer;
- :mod:`.rank`: ``RankPruner``, the per-event loop of the rank arms (an arm writes one ``plan_ranks``);
- :mod:`.budget`: ``TargetPruner``, the budget mix-in of the arms matched to a parameter count;
- :mod:`.params`: the valid values of the arguments, declared once on each class;
- :mod:`.schedules`: keep fractions f(epoch) and the spike-count cut;
- one module per arm: :mod:`.rmt` (the MP edge), :mod:`.lowrank`, :mod:`.magnitude`, :mod:`.neuron`,
  :mod:`.control` (``none`` and ``control``), and :mod:`.registry` (name -> class);
- :mod:`.batchnorm`: BatchNorm statistics after a cut.
"""
