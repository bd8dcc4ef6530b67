"""Parts the core uses by name without importing them: a product's task templates and the
built-in base models, registered as Python entry points (``pyproject.toml``).

The simulated product registers itself here (``simulated`` task templates, the ``tiny-llama``
base model), so the demo's and the tests' defaults work while no production module imports
`flywheel.sim`. A team adds its own templates or base-model builder the same way, from its own
package, and names it in the config.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, cast

from flywheel.errors import ConfigError

if TYPE_CHECKING:
    from flywheel.config import FlywheelConfig
    from flywheel.tasks import TaskTemplates

TASK_TEMPLATES = "flywheel.task_templates"
BASE_MODELS = "flywheel.base_models"

# A base-model builder makes the model ready (builds or fetches it) and returns the path or URI
# that training and inference load.
BaseModelBuilder = Callable[["FlywheelConfig"], str]


@cache
def _registered(group: str) -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=group)}


def _load(group: str, name: str) -> object:
    (ep,) = entry_points(group=group, name=name)
    return ep.load()


def task_templates(name: str) -> TaskTemplates:
    """The task templates registered as ``name`` (`evaluation.task_templates`)."""
    if name not in _registered(TASK_TEMPLATES):
        raise ConfigError(
            f"evaluation.task_templates {name!r}: no task templates of that name are installed "
            f"(registered: {sorted(_registered(TASK_TEMPLATES))}); register yours under the "
            f"{TASK_TEMPLATES!r} entry point, or set evaluation.golden_path to a curated golden set"
        )
    return cast("TaskTemplates", _load(TASK_TEMPLATES, name))


def prepare_base_model(config: FlywheelConfig) -> str:
    """The path or name of ``training.base_model``, made ready: a built-in model (one registered
    under ``flywheel.base_models``) is built on first use; any other name or path is a model that
    transformers loads as it is."""
    name = config.training.base_model
    if name not in _registered(BASE_MODELS):
        return name
    builder = cast(BaseModelBuilder, _load(BASE_MODELS, name))
    return builder(config)
