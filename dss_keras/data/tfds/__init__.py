"""TFDS builders for the four benchmarks of the paper: `dss_esnli`, `dss_anli1`,
`dss_cqa` and `dss_svamp`.

They read the authors' data release from `manual_dir` (see
`dss_keras.data.official`). Importing this package imports TensorFlow Datasets
and registers the builders; `dss_keras.data` itself never imports it.

```python
import tensorflow_datasets as tfds
import dss_keras.data.tfds  # registers the builders

ds = tfds.load(
    "dss_cqa",
    split="train[:25%]",
    download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir="path/to/datasets")
    },
)
```
"""

from dss_keras.data.tfds.dss_anli1 import dss_anli1_dataset_builder
from dss_keras.data.tfds.dss_cqa import dss_cqa_dataset_builder
from dss_keras.data.tfds.dss_esnli import dss_esnli_dataset_builder
from dss_keras.data.tfds.dss_svamp import dss_svamp_dataset_builder

BUILDERS = {
    "dss_esnli": dss_esnli_dataset_builder.Builder,
    "dss_anli1": dss_anli1_dataset_builder.Builder,
    "dss_cqa": dss_cqa_dataset_builder.Builder,
    "dss_svamp": dss_svamp_dataset_builder.Builder,
}
