"""The config: Hydra lives here and above.

- :mod:`.schema`: the structured-config schema and its registration with Hydra;
- :mod:`.validate`: the checks Hydra cannot express (one ``rmtprune: error:`` line naming the key);
- :mod:`.identity`: what makes two runs the same (``identity``, ``config_key``, ``KEYS_SINCE``);
- :mod:`.build`: the one place that turns a composed config into objects (model spec, pruner, schedule, data,
  optimizer and run settings; all of one run together: ``Job``). Nothing below it receives a config node.
"""
