"""The project's own exception types, so callers (and Airflow tasks) can tell failures apart."""


class FlywheelError(Exception):
    """Base class of every error the flywheel raises on purpose."""


class ConfigError(FlywheelError):
    """The configuration (YAML or a run's params) is invalid."""


class WindowError(FlywheelError):
    """A data window cannot be computed from the given run dates."""


class WarehouseError(FlywheelError):
    """The warehouse refused an operation or holds data the flywheel cannot use."""


class GateError(FlywheelError):
    """A data or model gate failed; the cycle must stop here."""


class TrainingError(FlywheelError):
    """Fine-tuning could not run (no data, bad base model, ...)."""


class RegistryError(FlywheelError):
    """The model registry is inconsistent (unknown version, missing adapter, ...)."""
