"""Depth-reasoning tasks: task files, their generators and the brute-force solvers that check them.

A task file is JSON lines, one example a line: ``{"prompt": str, "answer": str, "difficulty": int}``
(``difficulty`` optional; other fields are kept and ignored). ``files`` reads and writes them
strictly; ``hops`` (variable chains), ``induction`` (p-hop induction) and ``pointer`` generate them, each with
a solver that counts the sequential lookups an answer needs, so that ``difficulty`` means exactly
that count; ``make`` writes the train / valid / test splits of a generator.
"""
