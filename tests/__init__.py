"""The flywheel's tests: a regular package, so that `tests.helpers` resolves to this folder even
though an installed distribution (looker_sdk) ships a namespace package of the same name."""
