"""Records, where they come from (`load`), and the tf.data pipeline that feeds the model.

Importing this package is light: the pipeline (TensorFlow) and the readers
of the authors' release load when first used.
"""

from dss_keras.data.records import (
    Record,
    RecordError,
    read_csv,
    read_jsonl,
    read_records,
    record_from_dict,
    write_csv,
    write_jsonl,
)
from dss_keras.data.sources import Splits, load
from dss_keras.data.splits import split_validation, take_fraction
from dss_keras.data.teacher_outputs import (
    AnswerFormat,
    ParsedOutputs,
    get_answer_format,
    parse_teacher_outputs,
)
from dss_keras.data.word_problems import word_problems

_LAZY = {
    "PipelineReport": "dss_keras.data.pipeline",
    "make_dataset": "dss_keras.data.pipeline",
    "TeacherReport": "dss_keras.data.official",
    "load_benchmark": "dss_keras.data.official",
    "load_official": "dss_keras.data.official",
    "read_official": "dss_keras.data.official",
    "teacher_report": "dss_keras.data.official",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
