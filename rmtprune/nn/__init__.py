"""Layers and networks: no config, no files.

- :mod:`.layers`: the factorised layers (``LowRankLinear``, ``LowRankConv2d``, ``W = W2 @ W1``) and
  ``ShrunkLinear`` (a Linear with units removed);
- :mod:`.geometry`: layer geometry and all parameter counting (a layer's matrix shape, its parameters dense,
  split or planned, the model's count, bytes and FLOPs);
- :mod:`.select`: which layers a pruner may touch (eligibility, ``include``/``exclude`` patterns);
- :mod:`.surgery`: one layer's SVD, cut (split into two factors or truncated in place), kept units;
- :mod:`.models`: the MLP, the reference CNN, the user's own module; ``parse_topology``, ``build_model``,
  ``factorise_to_match``;
- :mod:`.split_cost`: ``split=auto``'s cost model; :mod:`.costs`: a final model's bytes, FLOPs, latency;
- :mod:`.masks`: magnitude masks (``prune_to_count``); :mod:`.evaluate`: loss and accuracy on a loader.
"""
