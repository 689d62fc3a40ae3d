"""What the notebooks use: the helpers their cells call (`cells`), friendly errors, the
reference fallback for a learner function that failed its check (`fallback`), headless execution
of the notebooks (`execute`; building them is `notebooks/build.py`), and the call server that
runs a learner's functions in their own process for the grader (`callserver`).

May import: cptlab.core, cptlab.data, cptlab.speed, cptlab.model, cptlab.lab.
"""
