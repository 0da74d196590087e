"""Records, their files, and the tf.data pipeline that feeds the model."""

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
from dss_keras.data.pipeline import PipelineReport, make_dataset
from dss_keras.data.word_problems import word_problems
from dss_keras.data.official import (
    TeacherReport,
    load_benchmark,
    load_official,
    read_official,
    teacher_report,
)
from dss_keras.data.splits import split_validation, take_fraction
from dss_keras.data.teacher_outputs import (
    AnswerFormat,
    ParsedOutputs,
    get_answer_format,
    parse_teacher_outputs,
)
