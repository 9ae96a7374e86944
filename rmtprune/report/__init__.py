"""From run folders to tables and figures: ``compare`` (:mod:`.compare`), its statistics (:mod:`.stats`),
figures (:mod:`.plots`), ``inspect`` (:mod:`.inspection`), and compare's post-training magnitude baseline
(:mod:`.baseline`). Reports read files only.
"""
