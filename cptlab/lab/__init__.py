"""The lab itself: the four steps, each writing its results file (`steps`), a whole run from a
terminal with a lock and resume (`pipeline`), the step-4 trade-off study (`study`), the plots
and the run's one HTML page (`plots`, `page`).

May import: cptlab.core, cptlab.data, cptlab.speed, cptlab.model.
"""
