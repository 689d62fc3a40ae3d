"""Grading a class (`classroom`): reading submissions and merging their answers by meaning
(`submissions`), the sandbox a notebook runs in (`sandbox`), memory caps that fit the machine
(`machine_limits`), grading one learner (`learner`), judging learner functions in their own
processes (`judge`), classmate and reference-call flags (`flags`), copies of the shipped library
(`library_copies`), a learner's result (`result`) and the gradebook made of them (`gradebook`);
where instructors grade: a Slurm job array (`slurm`), a Gradescope autograder (`gradescope`, with
`find_notebooks` for a submission's files); what learners receive (`release`) and the command line
(`grade`, ``python -m checkers``).

May import: checkers.core, checkers.code, checkers.results, checkers.verify, cptlab.core, cptlab.data,
cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""
