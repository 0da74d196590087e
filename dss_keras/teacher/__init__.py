"""The teacher step of distilling step-by-step: rationales and labels from an LLM.

Prompt a teacher with few-shot chain-of-thought demonstrations and write one
record per input, with the teacher's `rationale` and `llm_label`, that
`dss-keras train` reads as it is:

```python
from dss_keras import teacher

report = teacher.extract(
    "inputs.jsonl", "teacher.jsonl", task="cqa", backend="openai",
    model="llama3.1", backend_options={"base_url": "http://localhost:11434/v1"})
print(report)
```

- `prompts`, `tasks`: templates; the built-in tasks, and custom ones;
- `backends`: OpenAI-compatible endpoints (adapting to what they accept:
  `backends.adaptation`) and KerasHub causal LMs;
- `extraction`, `output_file`, `answers`: the resumable, exactly-once loop,
  its locked output file, and the record of each answer;
- `batch`: the Batch API route and `vllm run-batch` files;
- `dry_run`, `spending`: the prompt, tokens and cost before a run, and the
  spending limit during one;
- `report`: the run's report and the training-file filters.

Nothing here imports TensorFlow or KerasHub until the KerasHub backend is
built (importing `dss_keras` itself does).
"""

from dss_keras.teacher.answers import majority_vote
from dss_keras.teacher.backends import Backend, Generation, TeacherError, make_backend
from dss_keras.teacher.backends.adaptation import RequestParameters
from dss_keras.teacher.extraction import extract, read_inputs
from dss_keras.teacher.dry_run import dry_run
from dss_keras.teacher.prompts import Demonstration, Prompt, PromptTemplate
from dss_keras.teacher.report import FILTERS, ExtractionReport
from dss_keras.teacher.spending import Prices
from dss_keras.teacher.tasks import (
    ANSWER_KINDS,
    TASKS,
    custom_answer_format,
    custom_template,
    get_template,
    read_demonstrations,
    resolve_template,
)
