"""The foundation: the recipe (`config`), where caches live (`cache`), one process or many
(`distributed`), progress lines, confidence intervals (`uncertainty`) and the step files every
later layer reads and writes (`results`, with the one atomic writer and hash in `files`).

May import: nothing else of cptlab.
"""
