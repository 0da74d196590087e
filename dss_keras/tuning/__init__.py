"""KerasTuner search over alpha and the training-data fraction.

`DSSHyperModel` (`hypermodel.py`) turns a base `TrainConfig` and `Splits` into a search space:

| hyperparameter   | default choices                | what it sets                       |
|------------------|--------------------------------|------------------------------------|
| `mode`           | `distill_step_by_step`         | `TrainConfig.mode`                 |
| `alpha`          | 0.1, 0.3, 0.5, 0.7, 0.9        | only when mode is distill step-by-step |
| `train_fraction` | 0.125, 0.25, 0.5, 1.0          | the deterministic, nested subset   |
| `learning_rate`  | the base config's              | `TrainConfig.learning_rate`        |
| `seed`           | the base config's              | weights, subset and shuffle        |

A hyperparameter with one choice is `Fixed`. Every trial trains the base
config's `steps` and is scored by `val_label_accuracy`: labels generated for
the validation records and scored with the config's `metric` (the benchmark's
own, e.g. equation value for svamp), never token accuracy. The objective is
`OBJECTIVE`, `Objective("val_label_accuracy", "max")`; the trial's score is
the best value over its evaluation periods (`eval_every` steps each).

`tune()` (`search.py`) runs a random, Bayesian (needs scikit-learn and scipy) or grid search
in a project directory:

```
<project_dir>/
  search.json               the search (base config, space, data); a rerun must match
  vocabulary.spm            the tiny backbones' vocabulary, shared by all trials
  oracle.json, tuner0.json  KerasTuner's state
  trial_<id>/trial.json     a trial's values, metrics and status (+ best weights,
                            and backup/ while it trains)
  trials.csv, trials.json   one row per trial; the JSON adds the best settings per
                            mode and fraction, and the smallest-fraction answer
  accuracy_by_fraction.png  best validation accuracy per mode against the fraction
                            (alpha of each point written next to it)
  accuracy_by_alpha.png     accuracy against alpha, one line per fraction
```

Running it again on the same directory resumes: finished trials are kept, a
trial that was interrupted is run again from its last backup, and a larger
`max_trials` adds trials. A failed trial is recorded with its error and the
search goes on (three consecutive failures stop it, as in KerasTuner).

The reports (`report.py`) are written from the trial files, so
`dss-keras tune --report-only` rebuilds them at any time. With
`target_accuracy`, the reports answer "what is the smallest training
fraction whose best setting reaches this validation accuracy?", per mode.
Use `search="grid"` (or enough trials) so that every fraction is tried.

Distributed search
------------------
KerasTuner's own chief/worker mode runs one search in several processes, on
one machine or several. Start the same command (same flags, same data, same
project directory, shared if on several machines) once per process, with

- `KERASTUNER_TUNER_ID`: `chief` for the oracle process, a distinct name
  (`tuner0`, `tuner1`, ...) for each worker;
- `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`: where the chief
  listens and the workers connect.

The chief trains nothing: it serves hyperparameters over gRPC and records the
results; workers ask for a trial, train it and report it until the oracle
says stop. The chief writes the reports once every trial has ended (it waits
for running trials, so it can take up to ~20 s after the last worker is done).
The gRPC channel is neither authenticated nor encrypted: use a loopback or
private address. A worker that dies mid-trial leaves its trial running in the
chief's view; restart the whole search (it resumes from the project
directory). On one machine:

```
export KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8470
KERASTUNER_TUNER_ID=chief  dss-keras tune --data word_problems --project-dir runs/tune &
KERASTUNER_TUNER_ID=tuner0 dss-keras tune --data word_problems --project-dir runs/tune &
KERASTUNER_TUNER_ID=tuner1 dss-keras tune --data word_problems --project-dir runs/tune &
wait
```
"""

from dss_keras.config import DEFAULT_ALPHAS, DEFAULT_TRAIN_FRACTIONS, TUNED_FIELDS
from dss_keras.tuning.hypermodel import OBJECTIVE, DSSHyperModel
from dss_keras.tuning.report import (
    COLUMNS,
    TuningReport,
    best_by_fraction,
    format_report,
    plot_trials,
    read_trials,
    smallest_fraction,
    write_reports,
)
from dss_keras.tuning.search import SEARCHES, make_tuner, tune
