"""The study runner: plan grid points into a study file, launch them on Ray, track, collect.

  plan.py        the study file (one entry per run: key, workdir, processes, resources, command)
  mesh.py        a device mesh that fits each run's batch
  selection.py   which grid points: keys, a filter over the grid, a tools/make_grid.py file
  experiment.py  a run's effective config (experiment file + key + --set overrides)
  engine.py      launching on a Ray cluster: tasks, placement groups, attempts and retries
  process.py     one trainer process of one attempt (the body of a Ray task)
  attempts.py    the durable record of attempts and what an attempt's end means
  lock.py        one launcher per study
  status.py      where every run stands, read from the study root alone
  collect.py     the finished runs, for tools/fit_scaling_laws.py
  layout.py      the files under a study root

docs/study.md describes running a study; tools/study.py is the command line.
"""
