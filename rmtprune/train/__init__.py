"""One run: the loop (:mod:`.loop`), the step (:mod:`.step`), the training state and checkpoints
(:mod:`.state`, :mod:`.checkpoint`, :mod:`.loading`), the post-training magnitude sweep (:mod:`.sweep`),
``rmtprune prune`` (:mod:`.prune_saved`), and the run's surroundings (environment, progress, loggers,
resources, signals).
"""
