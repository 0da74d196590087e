"""The `dss_anli1` TFDS builder."""
