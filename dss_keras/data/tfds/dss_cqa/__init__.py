"""The `dss_cqa` TFDS builder."""
