"""The `dss_esnli` TFDS builder."""
