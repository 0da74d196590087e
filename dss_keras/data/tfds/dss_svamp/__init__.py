"""The `dss_svamp` TFDS builder."""
