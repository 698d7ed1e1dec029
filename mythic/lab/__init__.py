"""The depth-reasoning lab: run an experiment (arms × seeds on generated task files) and report it.

``experiment``: the experiment file, task files, one worker job per (arm, seed), the run loop;
``results``: aggregation over seeds, the claims as measured differences, the Markdown report.
"""
