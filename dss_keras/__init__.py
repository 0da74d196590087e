"""dss-keras: Distilling step-by-step for Keras 3.

Train a small seq2seq model on an LLM's labels and rationales:

```python
import dss_keras

dss_keras.use_fast_cpu_runtime()  # optional, before Keras loads: faster CPU training
splits = dss_keras.data.load("word_problems")
vocabulary = dss_keras.vocabulary.train_vocabulary(splits.train, vocabulary_size=400)
model = dss_keras.DistillStepByStep(dss_keras.backbones.tiny_t5(proto=vocabulary))
model.compile(optimizer="adamw")
dataset, report = dss_keras.data.make_dataset(splits.train, model.preprocessor)
model.fit(dataset, epochs=1)
model.predict_labels(["Dee has 10 rocks. Then Dee lends 5 to Gus. "
                      "Gus has 8 rocks. How many rocks does Dee have now?"])
```

Importing the package is light: TensorFlow, Keras and KerasHub load with the
first attribute that needs them, so the CLI can quiet them first. The package
changes no process-wide setting unless asked (`use_fast_cpu_runtime`).
"""

__version__ = "0.1.0"

import importlib

_ATTRIBUTES = {
    "DistillStepByStep": "dss_keras.model",
    "TokenMean": "dss_keras.metrics",
    "MultiTaskPreprocessor": "dss_keras.preprocessor",
    "TrainConfig": "dss_keras.config",
    "use_fast_cpu_runtime": "dss_keras.tf_fast_path.cpu_runtime",
}
_SUBMODULES = ("backbones", "data", "evaluation", "experiments", "export", "metrics",
               "optimizers", "quickstart", "teacher", "testing", "training", "tuning",
               "vocabulary")


def __getattr__(name):
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"dss_keras.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_ATTRIBUTES, *_SUBMODULES])
