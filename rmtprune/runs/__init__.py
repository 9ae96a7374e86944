"""Run folders on disk: their files (:mod:`.folder`), reading finished runs back (:mod:`.walk`), and the run
a matched baseline takes its budget from (:mod:`.targets`).
"""
