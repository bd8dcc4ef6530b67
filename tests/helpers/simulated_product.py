"""What the config must say for the simulated product, in every test that filters its traffic."""

from __future__ import annotations

from typing import Any

# The simulated product's answers are one or two words, checkable by exact match, where a real
# chat product's responses are sentences: counted alone, as the method counts them, no answer
# would pass the length rule. The tests count the prompt with it, as the demo does
# (`flywheel.sim.demo.demo_config`).
SIMULATED_PRODUCT: dict[str, Any] = {"filters.length_counts": "prompt_and_response"}


def for_simulated_product(data: dict[str, Any]) -> None:
    """Set `SIMULATED_PRODUCT` in a config read from the YAML (a dict of sections)."""
    for dotted, value in SIMULATED_PRODUCT.items():
        section, key = dotted.split(".")
        data[section][key] = value
