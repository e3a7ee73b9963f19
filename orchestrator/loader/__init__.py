"""Loading stage: fleet files to located YAML values (see :mod:`.yamlfile`, :mod:`.fleet`)."""
