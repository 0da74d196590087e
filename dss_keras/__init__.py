"""dss-keras: Distilling step-by-step for Keras 3.

Train a small seq2seq model on an LLM's labels and rationales:

```python
import dss_keras

records = dss_keras.data.word_problems(2000)
model = dss_keras.DistillStepByStep(dss_keras.backbones.tiny_t5(
    [r.input for r in records] + [r.rationale for r in records]))
model.compile(optimizer="adamw")
dataset, report = dss_keras.data.make_dataset(records, model.preprocessor)
model.fit(dataset, epochs=1)
model.predict_labels(["Dee has 10 rocks. Then Dee lends 5 to Gus. "
                      "Gus has 8 rocks. How many rocks does Dee have now?"])
```
"""

__version__ = "0.1.0"

from dss_keras import backbones, data
from dss_keras.model import DistillStepByStep, TokenMean
from dss_keras.preprocessor import MultiTaskPreprocessor
